"""LoRA adapters (openhart.lora through peft) on the tiny conformance model (the official layout):
scale 0 is the base bit-exactly, fuse + unfuse restores the weights exactly, save + load gives
the same images, peft itself reads the folder, and an adapter of another base is refused."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from openhart import HARTPipeline
from openhart.commands.common import lora_spec
from openhart.config import MODEL_PRESETS
from openhart.loading import load_model
from openhart.lora import AdapterMismatch, AdapterRecord, LoraSettings, read_adapter, save_adapter, weights_probe
from openhart.lora import adapter as lora
from openhart.lora.fingerprint import fingerprint, probes_match
from openhart.hart_model import HARTModel
from openhart.serialization import CheckpointError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "conformance" / "hart-tiny"
PROMPTS = ["a red apple", "a blue square"]


def random_adapter(model: HARTModel, folder: Path, *, rank: int = 4, train_head: bool = False,
                   seed: int = 0, std: float = 0.05) -> Path:
    """An adapter of `model` with random A and B (B != 0, so it changes the images), saved as
    `openhart finetune` saves one. `model` itself is left without adapters."""
    settings = LoraSettings(rank=rank, train_head=train_head)
    probe = weights_probe(model)
    config = settings.peft_config(base_model=str(FIXTURE))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        lora.inject(model, config, "default")
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, std)
    state = lora.adapter_state(model, "default")
    lora.remove_adapters(model)
    return save_adapter(folder, config, state, AdapterRecord(base_model=str(FIXTURE), base_probe=probe,
                                                             resolution=128, trigger_words=["zq"]))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return random_adapter(load_model(FIXTURE), tmp_path_factory.mktemp("lora") / "adapter")


def pipeline(dtype=torch.float32) -> HARTPipeline:
    return HARTPipeline.from_pretrained(FIXTURE, text_encoder="random", dtype=dtype)


def images(pipe: HARTPipeline, seed: int = 0) -> torch.Tensor:
    return pipe(PROMPTS, seed=seed, output_type="pt").images


def test_scale_zero_is_the_base_and_unloading_restores_it_bit_exactly(adapter_dir):
    pipe = pipeline()
    base = images(pipe)
    name = pipe.load_lora_weights(adapter_dir)
    assert name == "default_0" and pipe.get_active_adapters() == ["default_0"]
    adapted = images(pipe)
    assert (adapted - base).abs().max() > 1e-3, "a random adapter must change the images"
    pipe.set_adapters(name, 0.0)
    assert torch.equal(images(pipe), base)
    pipe.set_adapters([name], [1.0])
    assert torch.equal(images(pipe), adapted)
    pipe.unload_lora_weights()
    assert torch.equal(images(pipe), base)
    assert not any("lora_" in n for n, _ in pipe.model.named_parameters())


def test_fuse_then_unfuse_restores_the_weights_exactly(adapter_dir):
    pipe = pipeline()
    name = pipe.load_lora_weights(adapter_dir, adapter_name="style")
    pipe.set_adapters(name, 0.7)
    before = {k: v.clone() for k, v in pipe.model.state_dict().items()}
    unfused = images(pipe)
    pipe.fuse_lora(lora_scale=1.0)
    fused_weights = pipe.model.state_dict()
    changed = [k for k in before if "lora_" not in k and not torch.equal(before[k], fused_weights[k])]
    assert changed and all("base_layer" in k for k in changed)
    fused = images(pipe)
    assert (fused - unfused).abs().max() < 1e-3  # the same function up to float rounding
    with pytest.raises(ValueError, match="unfuse_lora"):
        pipe.set_adapters(name, 0.5)
    pipe.unfuse_lora()
    after = pipe.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(images(pipe), unfused)


def test_save_then_load_gives_the_same_images(adapter_dir, tmp_path):
    first = pipeline()
    first.load_lora_weights(adapter_dir)
    expected = images(first, seed=3)
    # the same adapter written again from the loaded model, then read by a fresh pipeline
    state = lora.adapter_state(first.model, "default_0")
    adapter = read_adapter(adapter_dir)
    save_adapter(tmp_path / "copy", adapter.config, state, adapter.record)
    second = pipeline()
    second.load_lora_weights(tmp_path / "copy")
    assert torch.equal(images(second, seed=3), expected)
    assert read_adapter(tmp_path / "copy").fingerprint == adapter.fingerprint


def test_the_folder_is_peft_s_own_format(adapter_dir):
    from peft import PeftModel

    files = sorted(p.name for p in adapter_dir.iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "openhart_adapter.json"]
    assert all(k.startswith("base_model.model.transformer.blocks.") for k in load_file(adapter_dir / "adapter_model.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    ours = load_model(FIXTURE)
    stack_pipe = pipeline()
    stack_pipe.load_lora_weights(adapter_dir)
    theirs = PeftModel.from_pretrained(load_model(FIXTURE), str(adapter_dir)).base_model.model
    x = torch.randn(2, 5, ours.config.transformer.embed_dim, generator=torch.Generator().manual_seed(0))
    for path in ("transformer.blocks.0.attn.out", "transformer.blocks.1.mlp.down"):
        layer_ours = stack_pipe.model.get_submodule(path)
        layer_theirs = theirs.get_submodule(path)
        if path.endswith("down"):
            x = torch.randn(2, 5, layer_ours.in_features, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(layer_ours(x), layer_theirs(x), rtol=0, atol=0)


def test_an_adapter_of_another_base_is_refused_naming_both_fingerprints(tmp_path):
    torch.manual_seed(1)
    other = HARTModel(load_model(FIXTURE).config)  # same architecture, other weights
    folder = random_adapter(other, tmp_path / "other")
    pipe = pipeline()
    with pytest.raises(AdapterMismatch) as error:
        pipe.load_lora_weights(folder)
    recorded = read_adapter(folder).record.base_fingerprint
    message = str(error.value)
    assert recorded in message and pipe.adapters.base_fingerprint in message and "\n" not in message
    assert not any("lora_" in n for n, _ in pipe.model.named_parameters()), "nothing may stay half-applied"
    # another width: refused by its fingerprint too (its shapes differ)
    wide = HARTModel(MODEL_PRESETS["tiny"]())
    with pytest.raises(AdapterMismatch):
        pipeline().load_lora_weights(random_adapter(wide, tmp_path / "wide"))


def test_the_base_is_recognised_in_another_dtype(adapter_dir):
    pipe = pipeline(dtype=torch.bfloat16)
    name = pipe.load_lora_weights(adapter_dir)
    assert all(p.dtype == torch.bfloat16 for n, p in pipe.model.named_parameters() if "lora_" in n)
    assert name == "default_0"
    fp32 = weights_probe(load_model(FIXTURE))
    assert probes_match(fp32, weights_probe(load_model(FIXTURE, dtype=torch.float16)))
    assert fingerprint(fp32) == fingerprint(weights_probe(load_model(FIXTURE, dtype=torch.bfloat16)))


def test_two_adapters_scale_and_record_in_metadata(adapter_dir, tmp_path):
    second = random_adapter(load_model(FIXTURE), tmp_path / "second", seed=5, rank=2)
    pipe = pipeline()
    a = pipe.load_lora_weights(adapter_dir)
    b = pipe.load_lora_weights(second, adapter_name="detail")
    pipe.set_adapters([a, b], [0.5, 1.25])
    out = pipe(PROMPTS[:1], seed=0)
    recorded = json.loads(out.metadata[0]["openhart"])["adapters"]
    assert [(r["name"], r["scale"]) for r in recorded] == [("default_0", 0.5), ("detail", 1.25)]
    assert recorded[1]["fingerprint"] == read_adapter(second).fingerprint
    with pytest.raises(ValueError, match="already loaded"):
        pipe.load_lora_weights(second, adapter_name="detail")
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        pipe.set_adapters("nope")
    with pytest.raises(ValueError, match="one weight per adapter"):
        pipe.set_adapters([a, b], [1.0])


def test_ranks_are_checked_against_the_layers():
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        LoraSettings(rank=0)
    model = load_model(FIXTURE)
    lora.check_rank(model, LoraSettings(rank=64))
    with pytest.raises(ValueError, match=r"LoRA rank 65 is larger than the layer .* choose a rank of at most 64"):
        lora.check_rank(model, LoraSettings(rank=65))


@pytest.mark.parametrize("damage", ["truncated", "no-lora-keys", "nan", "bad-json", "bad-record", "pickle"])
def test_a_corrupt_adapter_is_one_clear_error(adapter_dir, tmp_path, damage):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(adapter_dir, folder)
    weights = folder / "adapter_model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "no-lora-keys":
        save_file({"x": torch.zeros(2)}, weights)
    elif damage == "nan":
        state = load_file(weights)
        first = sorted(state)[0]
        state[first] = torch.full_like(state[first], float("nan"))
        save_file(state, weights)
    elif damage == "bad-json":
        (folder / "adapter_config.json").write_text("{not json")
    elif damage == "bad-record":
        record = json.loads((folder / "openhart_adapter.json").read_text())
        record["base_probe"] = {"x": {"shape": "no", "values": []}}
        (folder / "openhart_adapter.json").write_text(json.dumps(record))
    else:
        weights.unlink()
        torch.save({"x": 1}, folder / "adapter_model.bin")
    with pytest.raises(CheckpointError) as error:
        pipeline().load_lora_weights(folder)
    assert "\n" not in str(error.value)


def test_lora_arguments_parse_path_and_scale():
    assert lora_spec("runs/style") == ("runs/style", 1.0)
    assert lora_spec("runs/style:0.5") == ("runs/style", 0.5)
    assert lora_spec("owner/name@v1:-1") == ("owner/name@v1", -1.0)
    assert lora_spec("C:/adapters/x") == ("C:/adapters/x", 1.0)


def test_cli_generate_with_lora_and_the_merged_export(adapter_dir, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "openhart", *args], capture_output=True, text=True, timeout=300)

    common = ["--model", str(FIXTURE), "--text-encoder", "random", "--seed", "0", "--dtype", "fp32"]
    result = run("generate", "a red apple", *common, "--lora", f"{adapter_dir}:0.8", "--out", str(tmp_path / "a.png"))
    assert result.returncode == 0, result.stderr
    from PIL import Image

    meta = json.loads(Image.open(tmp_path / "a.png").text["openhart"])
    assert meta["adapters"][0]["scale"] == 0.8 and meta["adapters"][0]["source"] == str(adapter_dir)
    result = run("export", str(adapter_dir), str(tmp_path / "merged"), "--merge-lora", "--model", str(FIXTURE))
    assert result.returncode == 0, result.stderr
    # the merged folder holds exactly the weights of fuse_lora (its images differ from the
    # official folder's by float rounding only, as any converted folder's do)
    pipe = pipeline()
    pipe.load_lora_weights(adapter_dir)
    pipe.fuse_lora()
    fused = {k.replace(".base_layer", ""): v for k, v in pipe.model.state_dict().items() if "lora_" not in k}
    merged = load_model(tmp_path / "merged")
    assert fused.keys() == merged.state_dict().keys()
    assert all(torch.equal(fused[k], v) for k, v in merged.state_dict().items())
    merged_pipe = HARTPipeline.from_pretrained(tmp_path / "merged", text_encoder="random", dtype=torch.float32)
    torch.testing.assert_close(images(merged_pipe), images(pipe), rtol=0, atol=1e-4)
    for bad in (["--lora", str(tmp_path / "nowhere")], ["--lora", f"{adapter_dir}:1e9"]):
        result = run("generate", "x", *common, *bad, "--out", str(tmp_path / "b.png"))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "b.png").exists()
