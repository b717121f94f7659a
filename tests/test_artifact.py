"""The directions file: round trip, validation messages that name the field, atomic writes, shift vectors."""

from __future__ import annotations

import dataclasses

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from lm_eval_iti.artifact import Directions, ModelShape, load_directions, save_directions
from lm_eval_iti.errors import ITIError


def make(num_layers=3, num_heads=4, head_dim=8, alpha=15.0, seed=0) -> Directions:
    g = torch.Generator().manual_seed(seed)
    heads = {0: torch.tensor([1, 3]), 2: torch.tensor([0])}
    dirs, sig = {}, {}
    for layer, hs in heads.items():
        d = torch.randn(len(hs), head_dim, generator=g)
        dirs[layer] = d / d.norm(dim=1, keepdim=True)
        sig[layer] = torch.rand(len(hs), generator=g) + 0.1
    rank = torch.tensor([[2, 0], [0, 3], [0, 1], [1, 1]])
    acc = torch.rand(num_layers, num_heads, generator=g)
    return Directions(num_layers, num_heads, head_dim, heads, dirs, sig,
                      {"model": "m", "model_revision": "r", "architecture": "LlamaForCausalLM", "alpha": str(alpha),
                       "method": "mass-mean", "seed": "42"}, acc, rank)


def test_round_trip_keeps_every_tensor_and_metadata(tmp_path):
    d = make()
    path = save_directions(d, tmp_path / "d.safetensors")
    raw = load_file(str(path))
    assert raw["layers.0.heads"].dtype == torch.int64 and raw["layers.0.directions"].dtype == torch.float32
    back = load_directions(path, expect=ModelShape(3, 4, 8))
    for layer in d.heads:
        assert torch.equal(back.heads[layer], d.heads[layer])
        assert torch.equal(back.directions[layer], d.directions[layer].float())
        assert torch.equal(back.sigma[layer], d.sigma[layer].float())
    assert torch.equal(back.head_rank, d.head_rank) and torch.equal(back.probe_accuracy, d.probe_accuracy)
    assert back.metadata["format"] == "lm-eval-iti/directions" and back.metadata["site"] == "attn_out_proj_input"
    assert back.metadata["num_heads"] == "4" and back.alpha == 15.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_shift_vector_is_alpha_sigma_direction_in_the_head_slice():
    d = make(alpha=2.0)
    vecs = d.shift_vectors(2.0)
    assert set(vecs) == {0, 2}
    expected = torch.zeros(4 * 8)
    for i, h in enumerate(d.heads[0].tolist()):
        expected[h * 8:(h + 1) * 8] = 2.0 * d.sigma[0][i] * d.directions[0][i]
    assert torch.allclose(vecs[0], expected, atol=0, rtol=0)
    assert vecs[2][8:].abs().sum() == 0  # unselected heads stay zero


def test_top_k_follows_head_rank():
    d = make()
    top2 = d.top_k(2)
    assert top2.selected_heads() == [(2, 0), (0, 3)]
    assert torch.equal(top2.heads[0], torch.tensor([3]))
    with pytest.raises(ITIError, match="only 3 heads"):
        d.top_k(4)


def _tamper(tmp_path, mutate):
    path = save_directions(make(), tmp_path / "d.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    mutate(tensors, meta)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    return bad


@pytest.mark.parametrize("mutate, field", [
    (lambda t, m: t["layers.0.directions"].__setitem__((0, 0), float("nan")), "layers.0.directions"),
    (lambda t, m: t["layers.0.directions"].mul_(2), "layers.0.directions"),
    (lambda t, m: t["layers.0.sigma"].__setitem__(0, -1.0), "layers.0.sigma"),
    (lambda t, m: t.__setitem__("layers.0.heads", torch.tensor([1, 9])), "layers.0.heads"),
    (lambda t, m: t.pop("layers.2.sigma"), "layers.2.sigma"),
    (lambda t, m: m.__setitem__("alpha", "strong"), "__metadata__.alpha"),
    (lambda t, m: m.__setitem__("format_version", "7"), "__metadata__.format_version"),
    (lambda t, m: m.pop("format"), "__metadata__.format"),
])
def test_bad_files_name_the_file_and_field(tmp_path, mutate, field):
    bad = _tamper(tmp_path, mutate)
    with pytest.raises(ITIError) as err:
        load_directions(bad)
    message = str(err.value)
    assert str(bad) in message and f"'{field}'" in message and "\n" not in message


def test_another_models_file_is_refused(tmp_path):
    path = save_directions(make(), tmp_path / "d.safetensors")
    with pytest.raises(ITIError, match=r"num_heads.*is 4 but the model.*has 8"):
        load_directions(path, expect=ModelShape(3, 8, 8))


def test_missing_and_non_safetensors_files(tmp_path):
    with pytest.raises(ITIError, match="not found"):
        load_directions(tmp_path / "absent.safetensors")
    pickled = tmp_path / "evil.safetensors"
    import pickle

    pickled.write_bytes(pickle.dumps({"x": 1}))  # must be rejected, never unpickled
    with pytest.raises(ITIError, match="not a readable safetensors"):
        load_directions(pickled)


def test_saving_the_same_content_again_keeps_the_file_and_its_sha256(tmp_path):
    from lm_eval_iti.artifact import file_sha256

    path = save_directions(make(), tmp_path / "d.safetensors")
    before, inode = file_sha256(path), path.stat().st_ino
    # safetensors orders metadata as a hash map does, so an identical rewrite may change the bytes: none happens
    save_directions(make(), path)
    assert file_sha256(path) == before and path.stat().st_ino == inode  # a write would rename a new file in
    base = make()
    changed = dataclasses.replace(base, sigma={**base.sigma, 0: base.sigma[0] * 2})
    save_directions(changed, path)
    assert file_sha256(path) != before and torch.equal(load_directions(path).sigma[0], changed.sigma[0].float())
    changed_meta = make(alpha=3.0)
    save_directions(changed_meta, path)
    assert load_directions(path).alpha == 3.0


def test_failed_save_writes_nothing(tmp_path):
    base = make()
    d = dataclasses.replace(base, sigma={**base.sigma, 0: torch.tensor([math.nan, 1.0])})
    with pytest.raises(ITIError):
        save_directions(d, tmp_path / "d.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_metadata_is_plain_strings(tmp_path):
    d = dataclasses.replace(make(), metadata={**make().metadata, "train_question_ids": json.dumps(["a", "b"])})
    back = load_directions(save_directions(d, tmp_path / "d.safetensors"))
    assert json.loads(back.metadata["train_question_ids"]) == ["a", "b"]


def test_saving_leaves_the_callers_object_as_it_was(tmp_path):
    import torch

    from lm_eval_iti.artifact import Directions, load_directions, save_directions

    d = Directions(2, 2, 3, {1: torch.tensor([0])}, {1: torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)},
                   {1: torch.tensor([0.5], dtype=torch.float64)}, {"alpha": 2.5, "method": "mass-mean"})
    save_directions(d, tmp_path / "d.safetensors")
    assert d.directions[1].dtype == torch.float64 and d.alpha == 2.5 and "alpha" not in d.metadata  # untouched
    loaded = load_directions(tmp_path / "d.safetensors")
    assert loaded.directions[1].dtype == torch.float32 and loaded.alpha == 2.5


def test_directions_are_immutable_and_with_alpha_returns_a_new_object(tmp_path):
    d = make(alpha=4.0)
    for mutate in (lambda: setattr(d, "alpha", 1.0), lambda: d.metadata.__setitem__("method", "x"),
                   lambda: d.sigma.__setitem__(0, d.sigma[0] * 2), lambda: d.heads.pop(0),
                   lambda: d.metadata.update(method="x"), lambda: d.directions.clear()):
        with pytest.raises((dataclasses.FrozenInstanceError, TypeError, AttributeError)):
            mutate()
    stronger = d.with_alpha(9)
    assert stronger is not d and (d.alpha, stronger.alpha) == (4.0, 9.0) and isinstance(stronger.alpha, float)
    assert stronger.heads[0] is d.heads[0]  # the tensors are shared, not copied
    with pytest.raises(ITIError, match="must be finite"):
        d.with_alpha(float("nan"))
    with pytest.raises(ITIError, match="overflows float32"):
        d.with_alpha(1e39)
    assert d.top_k(2).alpha == 4.0  # every derived object keeps the strength
    import copy
    import pickle

    for twin in (copy.deepcopy(d), pickle.loads(pickle.dumps(d)), dataclasses.replace(d)):
        assert twin.alpha == 4.0 and twin.metadata == d.metadata and torch.equal(twin.sigma[0], d.sigma[0])
    assert dataclasses.asdict(d)["metadata"]["method"] == d.metadata["method"]


def test_alpha_and_provenance_round_trip_through_the_file(tmp_path):
    provenance = {"model": "tiny", "model_revision": "r", "dataset": "v0", "dataset_sha256": "ab" * 32, "num_folds": "2", "fold": "1",
                  "seed": "7", "train_question_ids": json.dumps(["q1", "q2"])}
    d = dataclasses.replace(make(), metadata={**make().metadata, **provenance}).with_alpha(2.75)
    assert d.provenance == provenance and "alpha" not in d.metadata
    back = load_directions(save_directions(d, tmp_path / "d.safetensors"))
    assert back.alpha == 2.75 and back.provenance == provenance
    from safetensors import safe_open

    with safe_open(str(tmp_path / "d.safetensors"), framework="pt") as fh:
        assert fh.metadata()["alpha"] == "2.75"  # save is where the number becomes text
