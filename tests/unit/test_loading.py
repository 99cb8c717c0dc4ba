import os
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from openhart.loading import load_model, load_tokenizer, save_model, save_tokenizer
from openhart.outputs import atomic_path
from openhart.serialization import CheckpointError, read_state_dict

from ..conftest import HART_TINY

OFFICIAL = HART_TINY / "tokenizer"


@pytest.fixture
def official_copy(tmp_path):
    folder = tmp_path / "tokenizer"
    shutil.copytree(OFFICIAL, folder)
    return folder


def _probe(tokenizer):
    x = torch.linspace(-1, 1, 3 * 128 * 128).reshape(1, 3, 128, 128)
    with torch.no_grad():
        return tokenizer.decode_latent(tokenizer.encode(x).latent)


def test_own_format_round_trip(tmp_path):
    tokenizer = load_tokenizer(OFFICIAL)
    out = save_tokenizer(tokenizer, tmp_path / "mine")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["model_type"] == "openhart.tokenizer"
    again = load_tokenizer(out)
    assert again.config == tokenizer.config
    for (k, a), (k2, b) in zip(tokenizer.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    torch.testing.assert_close(_probe(again), _probe(tokenizer), atol=0, rtol=0)
    save_tokenizer(again, out)  # overwriting an existing folder works too
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "temporary files left"


def test_model_folder_with_tokenizer_subfolder():
    assert load_tokenizer(HART_TINY).config.vocab_size == 600


def test_official_bin_with_discriminator_loads(tmp_path):
    state = load_file(str(OFFICIAL / "model.safetensors"))
    state["disc.main.0.weight"] = torch.zeros(64, 3, 4, 4)
    state["vae.quantize.ema_vocab_hit_SV"] = torch.zeros(6, 600)
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(OFFICIAL / "config.json", folder)
    torch.save(state, folder / "pytorch_model.bin")
    torch.testing.assert_close(_probe(load_tokenizer(folder)), _probe(load_tokenizer(OFFICIAL)))


def test_dtype_and_device_arguments():
    tokenizer = load_tokenizer(OFFICIAL, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in tokenizer.parameters()} == {torch.bfloat16}
    assert not tokenizer.training


def _edit_weights(folder, edit):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_missing_key_is_named(official_copy):
    _edit_weights(official_copy, lambda s: s.pop("vae.decoder.conv_out.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.conv_out\.bias \(expected shape \(3,\)\)"):
        load_tokenizer(official_copy)


def test_unexpected_key_is_named(official_copy):
    _edit_weights(official_copy, lambda s: s.update({"vae.encoder.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder\.extra\.weight"):
        load_tokenizer(official_copy)


def test_wrong_shape_is_named(official_copy):
    _edit_weights(official_copy, lambda s: s.update({"vae.quant_conv.bias": torch.zeros(5)}))
    with pytest.raises(CheckpointError,
                       match=r"model\.safetensors.*quant_conv\.bias: file has \(5,\), model expects \(32,\)"):
        load_tokenizer(official_copy)


def test_truncated_safetensors_names_the_file(official_copy):
    path = official_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        load_tokenizer(official_copy)


def test_truncated_bin_names_the_file(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"a": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*truncated or corrupt"):
        read_state_dict(path)


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_run(tmp_path, capsys):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"a": torch.zeros(1), "b": Evil()}, path)
    with pytest.raises(CheckpointError, match="never runs pickled code"):
        read_state_dict(path)
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("setup, message", [
    (lambda d: (d / "config.json").unlink(), "has no config.json"),
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "config.json").write_text('{"model_type": "bert"}'), "model_type 'bert'"),
    (lambda d: (d / "model.safetensors").unlink(), "no weights in"),
    (lambda d: (d / "config.json").write_text(
        json.dumps(dict(json.loads((OFFICIAL / "config.json").read_text()), mystery=1))), "mystery"),
])
def test_bad_folders(official_copy, setup, message):
    setup(official_copy)
    with pytest.raises(CheckpointError, match=message):
        load_tokenizer(official_copy)


def test_missing_folder_and_file_path(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_tokenizer(tmp_path / "file")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


# ----- whole models: the official llm/ folder ----------------------------------------------------



@pytest.fixture
def official_model_copy(tmp_path):
    root = tmp_path / "release"
    shutil.copytree(HART_TINY / "llm", root / "llm")
    shutil.copytree(HART_TINY / "tokenizer", root / "tokenizer")
    return root


def test_ema_weights_are_preferred_and_selectable(official_model_copy):
    llm = official_model_copy / "llm"
    state = load_file(str(llm / "model.safetensors"))
    ema = {k: (v + 1.0 if k == "head.bias" else v) for k, v in state.items()}
    torch.save(ema, llm / "ema_model.bin")
    head_bias = lambda m: m.transformer.head.bias  # noqa: E731
    assert torch.equal(head_bias(load_model(official_model_copy)), ema["head.bias"])
    assert torch.equal(head_bias(load_model(official_model_copy, weights="raw")), state["head.bias"])
    (llm / "ema_model.bin").unlink()
    with pytest.raises(CheckpointError, match="weights='ema' was asked for"):
        load_model(official_model_copy, weights="ema")


def test_official_bin_llm_and_skipped_mask_buffer(official_model_copy):
    llm = official_model_copy / "llm"
    state = load_file(str(llm / "model.safetensors"))
    assert "attn_bias_for_masking" in state
    (llm / "model.safetensors").unlink()
    torch.save(state, llm / "pytorch_model.bin")
    skipped = read_state_dict(llm / "pytorch_model.bin", skip=lambda k: k == "attn_bias_for_masking")
    assert "attn_bias_for_masking" not in skipped and "lvl_1L" in skipped
    model = load_model(official_model_copy)
    assert not any("mask" in k for k in model.state_dict())


def test_nonzero_zero_k_bias_is_refused(official_model_copy):
    _edit_weights(official_model_copy / "llm",
                  lambda s: s["blocks.0.attn.zero_k_bias"].add_(1.0))
    with pytest.raises(CheckpointError, match="zero_k_bias is not all zeros"):
        load_model(official_model_copy)


def test_unknown_llm_key_is_named(official_model_copy):
    _edit_weights(official_model_copy / "llm", lambda s: s.update({"blocks.0.attn.extra": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=r"outside the official llm layout: \['blocks.0.attn.extra'\]"):
        load_model(official_model_copy)


def test_own_model_round_trip(tmp_path):
    model = load_model(HART_TINY)
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_atomic_files_get_the_usual_permissions(tmp_path):
    target = tmp_path / "x.json"
    from openhart.serialization import write_json

    write_json(target, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_load_tokenizer_takes_the_tokenizer_of_a_single_file_model_folder():
    from openhart import default_model
    from openhart.loading import load_model, load_tokenizer

    folder = default_model.default_model_dir()
    tokenizer = load_tokenizer(folder)
    expected = load_model(folder).tokenizer.state_dict()
    assert tokenizer.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in tokenizer.state_dict().items())
