import json

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import CheckpointError, ModelCard, load_checkpoint, save_checkpoint
from model.drca import DRCA
from model.text import TextHead
from tests.model.conftest import tiny_config


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
