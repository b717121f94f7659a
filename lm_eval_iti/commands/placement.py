"""``--device-map``, ``--max-memory``, ``--offload-folder``: accelerate's placement, on every command that loads a model."""

from __future__ import annotations

import click

PLACEMENT_OPTIONS = (
    click.option("--device-map", default=None,
                 help="Shard the model with accelerate: auto, balanced, sequential, or a JSON object module -> device "
                      "(0, \"cuda:1\", \"cpu\", \"disk\"). Replaces --device."),
    click.option("--max-memory", default=None,
                 help="With --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB."),
    click.option("--offload-folder", default=None, type=click.Path(file_okay=False),
                 help="With --device-map: folder for the weights offloaded to disk."),
)


def placement_options(func):
    for option in reversed(PLACEMENT_OPTIONS):
        func = option(func)
    return func


def placement(device_map, max_memory, offload_folder) -> dict:
    """The load_model keyword arguments; the library's errors name device_map=..., shown here with the flag names."""
    return {"device_map": device_map, "max_memory": max_memory, "offload_folder": offload_folder}
