import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import CheckpointError, ModelCard, load_checkpoint, save_checkpoint
from model.drca import DRCA
from model.text import TextHead
from tests.model.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def _card() -> ModelCard:
    return ModelCard(preset="tiny", class_names=[f"c{i}" for i in range(5)], seed=0, metrics={"top1": 0.5})


def test_checkpoint_round_trips_bit_for_bit(tmp_path) -> None:
    torch.manual_seed(0)
    model = DRCA(tiny_config())
    head = TextHead(384, 16)
    save_checkpoint(tmp_path / "ckpt", model, _card(), text_head=head)
    loaded = load_checkpoint(tmp_path / "ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    for k, v in head.state_dict().items():
        assert torch.equal(v, loaded.text_head.state_dict()[k]), k
    assert loaded.config == model.cfg
    assert loaded.card.class_names == _card().class_names and loaded.card.text_dim == 384
    x = torch.randn(1, 3, 6, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model.eval()(x).embedding, loaded.model(x).embedding)
    save_checkpoint(tmp_path / "ckpt2", loaded.model, loaded.card, text_head=loaded.text_head)
    # safetensors writes its JSON header in hash-map order, so compare the tensors, not the file bytes.
    first, second = load_file(tmp_path / "ckpt" / "model.safetensors"), load_file(tmp_path / "ckpt2" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_overwriting_a_checkpoint_replaces_it(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", DRCA(tiny_config()), _card())
    save_checkpoint(tmp_path / "c", DRCA(tiny_config()), _card())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_mismatched_shapes_are_refused_with_the_tensor_name(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", DRCA(tiny_config()), _card())
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["head"]["embed_dim"] = 24
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"tensor embed_head\.(weight|bias) has shape"):
        load_checkpoint(tmp_path / "c")


def test_missing_tensors_and_bad_files_are_refused(tmp_path) -> None:
    save_checkpoint(tmp_path / "c", DRCA(tiny_config()), _card())
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["backbone"]["depth"] = 3
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(b"\x80\x04 not safetensors")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "nowhere")


def test_class_names_must_match_the_head(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="class names"):
        save_checkpoint(tmp_path / "c", DRCA(tiny_config()), ModelCard(class_names=["only-one"]))


def _hostile(tmp_path, section: str | None = None, key: str | None = None, value: object = None,
             config_text: str | None = None, card_text: str | None = None):
    """A valid tiny checkpoint (with a text head) whose config.json or card.json is then rewritten."""
    path = save_checkpoint(tmp_path / "c", DRCA(tiny_config()), _card(), text_head=TextHead(384, 16))
    if section is not None:
        target = path / ("card.json" if section == "card" else "config.json")
        doc = json.loads(target.read_text())
        (doc if section == "card" else doc[section])[key] = value
        target.write_text(json.dumps(doc))
    if config_text is not None:
        (path / "config.json").write_text(config_text)
    if card_text is not None:
        (path / "card.json").write_text(card_text)
    return path


HOSTILE = {
    "huge embed_dim": {"section": "backbone", "key": "embed_dim", "value": 2**16},
    "huge depth": {"section": "backbone", "key": "depth", "value": 10**9},
    "huge num_samples": {"section": "backbone", "key": "num_samples", "value": 10**12},
    "huge num_frames": {"section": "input", "key": "num_frames", "value": 2**31},
    "huge img_size": {"section": "input", "key": "img_size", "value": 2**20},
    "huge head": {"section": "head", "key": "embed_dim", "value": 2**40},
    "huge num_classes": {"section": "head", "key": "num_classes", "value": 10**10},
    "negative embed_dim": {"section": "backbone", "key": "embed_dim", "value": -32},
    "zero heads": {"section": "backbone", "key": "num_heads", "value": 0},
    "huge text_dim": {"section": "card", "key": "text_dim", "value": 10**9},
    "card class_names not a list": {"section": "card", "key": "class_names", "value": {"a": 1}},
    "card not json": {"card_text": "{not json"},
    "card an array": {"card_text": "[1, 2, 3]"},
    "card nested 100000 deep": {"card_text": "[" * 100_000 + "]" * 100_000},
    "config nested 100000 deep": {"config_text": '{"input": ' + "[" * 100_000 + "]" * 100_000 + "}"},
    "config an array": {"config_text": "[]"},
    "config huge integer": {"config_text": '{"input": {"num_frames": 1' + "0" * 5000 + "}}"},
}


def test_hostile_checkpoint_directories_are_clear_errors_without_allocating(tmp_path) -> None:
    """Each case is refused with a one-line CheckpointError naming the directory, in one process whose address
    space is capped at 3 GiB: a loader that built the network before checking it against the weights would
    fail there with a MemoryError/RuntimeError (or hang building 10^9 layers) instead."""
    paths = {case: str(_hostile(tmp_path / f"case{i}", **HOSTILE[case])) for i, case in enumerate(sorted(HOSTILE))}
    code = (
        "import json, resource, sys\n"
        "from model.checkpoint import CheckpointError, load_checkpoint\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "for case, path in json.loads(sys.argv[1]).items():\n"
        "    try:\n"
        "        load_checkpoint(path)\n"
        "        print(json.dumps([case, 'loaded']), flush=True)\n"
        "    except CheckpointError as e:\n"
        "        print(json.dumps([case, 'CheckpointError', str(e)]), flush=True)\n"
        "    except BaseException as e:\n"
        "        print(json.dumps([case, type(e).__name__, str(e)[:300]]), flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(paths)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    results = {r[0]: r[1:] for r in map(json.loads, proc.stdout.splitlines())}
    assert set(results) == set(HOSTILE), (proc.stdout, proc.stderr[-2000:])
    for case, (kind, *message) in results.items():
        assert kind == "CheckpointError", (case, kind, message)
        assert "\n" not in message[0] and message[0].startswith(paths[case]), (case, message)
