"""The fake judge server itself (tests/_reference/judge_server.py): it speaks the OpenAI API, and its faults fire."""

from __future__ import annotations

import math

from _reference.judge_server import server_p_yes


def test_fake_server_speaks_openai(fake_server):
    import openai

    client = openai.OpenAI(api_key="k", base_url=fake_server.url, max_retries=0, timeout=5)
    assert [m.id for m in client.models.list().data] == ["truth-judge", "info-judge", "chat-judge"]
    r = client.completions.create(model="truth-judge", prompt="Q: a\nA: b\nTrue:", max_tokens=1, temperature=0,
                                  logprobs=5)
    top = r.choices[0].logprobs.top_logprobs[0]
    assert math.isclose(math.exp(top[" yes"]), server_p_yes("truth-judge", "Q: a\nA: b\nTrue:"), rel_tol=1e-12)
    c = client.chat.completions.create(model="chat-judge", messages=[{"role": "user", "content": "x"}])
    assert c.choices[0].message.content in ("Yes.", "no")
