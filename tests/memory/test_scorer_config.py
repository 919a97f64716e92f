"""Scorers are dataclasses whose fields are their hyper-parameters, filled by `from_config` from the
`MemoryConfig` fields of the same name (as a kvpress press is configured by its fields)."""

import dataclasses

from omnimem_train.config.schema import MemoryConfig
from omnimem_train.memory.registry import build_scorer, scorer_names


def test_every_scorer_takes_its_hyper_parameters_from_the_config():
    cfg = MemoryConfig(lam=0.3, query_block=7, window=9, sink_tokens=2, seed=5, sketch_dim=4, sketch_dtype="float16")
    sketch = {"sketch_dim": 4, "sketch_dtype": "float16"}
    expected = {"omnimem": {"lam": 0.3, "query_block": 7, **sketch}, "novelty": {"lam": 0.0, "query_block": 7, **sketch},
                "h2o": {"query_block": 7}, "snapkv": {"window": 9, "kernel": 5}, "recency": {"sink_tokens": 2},
                "random": {"seed": 5}, "key_norm": {}, "value_norm": {}, "keydiff": {}}
    assert set(expected) == set(scorer_names())
    for name, params in expected.items():
        scorer = build_scorer(name, cfg)
        assert dataclasses.is_dataclass(scorer) and scorer.name == name and scorer.per_head is False
        got = {f.name: getattr(scorer, f.name) for f in dataclasses.fields(scorer)
               if f.name not in ("per_head", "generator")}
        assert got == params, name
    per_head = build_scorer("snapkv", dataclasses.replace(cfg, per_head=True))
    assert per_head.per_head is True and per_head.window == 9
