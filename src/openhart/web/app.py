"""The Gradio app of `openhart serve`: one thin layer over `HARTPipeline`.

The Generate tab takes text and numbers only; the Edit tab also takes one uploaded image and the
strokes painted on it, which Gradio keeps in its upload folder and openhart reads with the size
checks of every image it reads (no path or pickle inputs). Each request is checked against
`ServeLimits` on the server, runs on the one worker of the model, and returns PNGs that carry the
same metadata as `openhart generate` writes.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from ..config import LAST_SCALE_MODES, SamplingConfig
from ..editing import inpaint_input, variation_input
from ..images import save_png
from ..pipeline import HARTPipeline
from ..sampling import per_scale
from ..seeding import new_seed
from .limits import (
    EDIT_MODES,
    MAX_DILATE,
    MAX_FEATHER,
    MAX_HEAD_TEMPERATURE,
    MAX_TOP_P,
    EditRequest,
    GenerationRequest,
    RequestError,
    ServeLimits,
    page_defaults,
    validate_edit,
    validate_request,
)

KEEP_FILES = 64  # newest PNGs kept in the output folder; Gradio serves its own copies
MAX_UPLOAD = "20mb"  # an image to edit (Gradio refuses larger uploads before they reach openhart)


def import_gradio():
    """Gradio, with its analytics off (set before the import, which reads it)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        # lazy: gradio adds ~5 s to every start; only `openhart serve` needs it
        import gradio
    except ImportError as error:
        raise ValueError("openhart serve needs Gradio, a dependency of openhart: reinstall "
                         "openhart (pip install -e .) or pip install 'gradio>=6,<7'") from error
    return gradio


class ImageService:
    """Runs validated requests through the pipeline and writes the PNGs with their metadata."""

    def __init__(self, pipe: HARTPipeline, output_dir: Path):
        self.pipe = pipe
        self.output_dir = output_dir

    def __call__(self, request: GenerationRequest, on_scale=None) -> tuple[list[Path], float]:
        start = time.perf_counter()
        out = self.pipe(request.prompt, negative_prompt=request.negative_prompt,
                        num_images_per_prompt=request.num_images, sampling=request.sampling,
                        seed=request.seed, on_scale=on_scale)
        return self._write(out), time.perf_counter() - start

    def edit(self, request: EditRequest, on_scale=None) -> tuple[list[Path], float, list[str]]:
        """Inpaint or vary the uploaded image; also the notes on how the input was taken."""
        start = time.perf_counter()
        g = request.generation
        model = self.pipe.model
        if request.mode == "inpaint":
            edit = inpaint_input(model, request.image, request.mask, dilate_pixels=request.dilate)
        else:
            edit = variation_input(model, request.image, request.strength)
        feather = request.feather if request.mode == "inpaint" else None
        out = self.pipe.edit(edit, g.prompt, feather, negative_prompt=g.negative_prompt,
                              num_images_per_prompt=g.num_images, sampling=g.sampling, seed=g.seed,
                              on_scale=on_scale)
        return self._write(out), time.perf_counter() - start, edit.notes

    def _write(self, out) -> list[Path]:
        stem = uuid.uuid4().hex[:12]
        paths = []
        for i, (image, text) in enumerate(zip(out.images, out.metadata)):
            path = self.output_dir / f"openhart-{stem}-{i:02d}.png"
            save_png(image, path, self._public(text))
            paths.append(path)
        self._prune()
        return paths

    def _public(self, text: dict[str, str]) -> dict[str, str]:
        """The metadata without this server's paths: local models and encoders by folder name."""
        record = json.loads(text["openhart"])
        for key in ("model", "text_encoder"):
            if Path(str(record[key])).is_absolute():
                record[key] = Path(record[key]).name
        for adapter in record.get("adapters", []):
            if Path(adapter["source"]).is_absolute():
                adapter["source"] = _folder_name(adapter["source"])
        return dict(text, openhart=json.dumps(record))

    def _prune(self) -> None:
        files = sorted(self.output_dir.glob("openhart-*.png"), key=lambda p: p.stat().st_mtime)
        for old in files[:-KEEP_FILES]:
            old.unlink(missing_ok=True)


def build_app(service: ImageService, limits: ServeLimits):
    """The Blocks of the page, queued with one worker and at most `limits.queue_size` waiting: a
    "Generate" tab (text to image) and an "Edit" tab (inpainting and variations of an upload)."""
    gr = import_gradio()
    pipe = service.pipe
    config = pipe.model.config
    size = config.image_size
    # the model's recommended settings within the page's limits: the widgets of both tabs start
    # there, and the Edit tab (which has no sampling widgets) sends them
    defaults = page_defaults(limits, pipe.default_sampling, config.tokenizer.vocab_size, config.head.sampling_steps)
    # Gradio's copies of the served PNGs are deleted after an hour (checked every 10 minutes)
    with gr.Blocks(title="openhart", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(f"## openhart · HART text-to-image\nModel **{pipe.name}** "
                    f"({size}x{size}, text encoder {Path(pipe.text_encoder_name).name}). "
                    f"Images download as PNGs with their prompt, seed and settings.")
        adapters = pipe.describe_adapters()
        if adapters:
            gr.Markdown("LoRA adapters: " + ", ".join(adapter_label(a) for a in adapters), elem_id="adapters")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate-tab", elem_id="generate-tab"):
                _generate_tab(gr, service, limits, defaults)
            with gr.Tab("Edit", id="edit-tab", elem_id="edit-tab"):
                _edit_tab(gr, service, limits, defaults)
    app.queue(max_size=limits.queue_size, default_concurrency_limit=1)
    _quiet_gradio_rejections(gr, app)
    return app


def _quiet_gradio_rejections(gr, app) -> None:
    """Gradio checks the number of values of a request, and the form of file components' values,
    before any handler runs, and answers a bad one with a bare exception: the client sees
    `error: null` and the server logs a traceback. Make those rejections quiet gr.Errors with a
    message, like openhart's own."""
    check = app.validate_inputs

    def validate_inputs(block_fn, inputs):
        try:
            check(block_fn, inputs)
        except ValueError:
            raise gr.Error(f"the request has {len(inputs)} input values; this endpoint takes "
                           f"{len(block_fn.inputs)}", title="Invalid input", print_exception=False) from None

    app.validate_inputs = validate_inputs
    preprocess = app.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        # Gradio validates the values of file components (the image editor) against their data
        # model even with preprocess=False: a value of another shape is a pydantic error there
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except (ValueError, TypeError):
            raise gr.Error("a value of the request does not have the form this endpoint takes (the image "
                           "editor takes an uploaded image); send what the page sends", title="Invalid input",
                           print_exception=False) from None

    app.preprocess_data = preprocess_data


def adapter_label(adapter: dict) -> str:
    """'**name** (scale 0.8, fused) from SOURCE, weights FINGERPRINT' for the page."""
    notes = [f"scale {adapter['scale']:g}"] + (["fused"] if adapter.get("fused") else [])
    return (f"**{adapter['name']}** ({', '.join(notes)}) from `{_folder_name(adapter['source'])}`, "
            f"weights {adapter['fingerprint']}")


def _folder_name(source: str) -> str:
    """A local adapter by its folder's name (a finetune run's, for its lora/ folder)."""
    path = Path(source)
    return path.parent.name if path.name == "lora" else path.name


def _progress_hook(progress, num_scales: int):
    """An on_scale hook that moves Gradio's progress bar once per scale."""
    done = []

    def scale_done(si: int) -> None:
        done.append(si)
        progress((len(done), num_scales), desc=f"scale {len(done)} of {num_scales}")

    return per_scale(scale_done)


def _generate_tab(gr, service: ImageService, limits: ServeLimits, defaults: SamplingConfig) -> None:
    vocab = service.pipe.model.config.tokenizer.vocab_size
    run = _generate_handler(gr, service, limits, defaults)

    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            # No max_length on the widgets: an over-long prompt gets the server's message
            # instead of being cut silently.
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="red apple", elem_id="prompt",
                                info=f"at most {limits.max_prompt_chars} characters")
            negative = gr.Textbox(label="Negative prompt (optional)", lines=1, elem_id="negative-prompt")
            seed, randomize, guidance, num_images = _seed_guidance_images(gr, limits, defaults, "")
            with gr.Accordion("Sampling", open=False):
                top_k = gr.Number(value=defaults.top_k,
                                  precision=0, minimum=0, maximum=vocab, elem_id="top-k",
                                  label="Top-k at every scale (0: off; empty: the model's per-scale "
                                        f"schedule {defaults.scale_top_k[0]}, then {defaults.scale_top_k[1]})")
                top_p = gr.Slider(0, MAX_TOP_P, value=defaults.top_p, step=0.01,
                                  label="Top-p (0: off)", elem_id="top-p")
                smooth = gr.Checkbox(value=defaults.smooth, label="Gumbel smoothing of code embeddings",
                                     elem_id="smooth")
                use_residual = gr.Checkbox(value=defaults.use_residual,
                                           label="Residual diffusion (off: discrete tokens only)",
                                           elem_id="residual")
                head_steps = _slider(gr, 1, limits.max_head_steps, value=defaults.head_steps, step=1,
                                     label="Residual diffusion steps", elem_id="head-steps")
                head_temperature = gr.Slider(
                    0, MAX_HEAD_TEMPERATURE, value=defaults.head_temperature,
                    step=0.05, label="Residual temperature (0: no noise after the first step)",
                    elem_id="head-temperature")
                last_scale = gr.Radio(
                    list(LAST_SCALE_MODES), value=defaults.last_scale, elem_id="last-scale",
                    label="Last scale: residual added to the head's code (consistent), to a "
                          "second smoothed draw (official) or to the smoothed draw's code (gumbel)")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column(scale=3, min_width=320):
            gallery = gr.Gallery(label="Images", columns=4, height=520, object_fit="contain",
                                 buttons=["download", "fullscreen"], interactive=False, elem_id="gallery")
            status = gr.Markdown(elem_id="status")
    inputs = [prompt, negative, seed, guidance, num_images, top_k, top_p, smooth, head_steps,
              use_residual, head_temperature, last_scale]
    # preprocess=False: the raw values go to `validate_request`, which checks every one (type,
    # finiteness, range) for the page and for API clients alike. Gradio's own range check of
    # the sliders would reject first, but prints a traceback in the server log each time.
    gr.on([button.click, prompt.submit], run, inputs, [gallery, status], concurrency_limit=1,
          api_name="generate", preprocess=False)
    randomize.click(new_seed, None, seed, queue=False, api_name=False)



def _generate_handler(gr, service: ImageService, limits: ServeLimits, defaults):
    """The Generate button's handler: the raw values checked against the limits, then drawn."""
    config = service.pipe.model.config
    vocab, num_scales, size = config.tokenizer.vocab_size, config.num_scales, config.image_size

    def run(prompt, negative_prompt, seed, guidance_scale, num_images, top_k, top_p, smooth, head_steps,
            use_residual, head_temperature, last_scale, progress=gr.Progress()):
        try:
            request = validate_request(
                limits, defaults, vocab, prompt=prompt, negative_prompt=negative_prompt, seed=seed,
                guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, smooth=smooth,
                head_steps=head_steps, use_residual=use_residual, num_images=num_images,
                head_temperature=head_temperature, last_scale=last_scale)
        except RequestError as error:
            raise gr.Error(str(error), title="Invalid input", print_exception=False) from None
        progress(0, desc="encoding the prompt")
        paths, seconds = service(request, _progress_hook(progress, num_scales))
        gallery = [(str(p), f"seed {request.seed} · image {i + 1}") for i, p in enumerate(paths)]
        status = (f"{len(paths)} image(s) of {size}x{size} in {seconds:.2f} s · seed {request.seed} · "
                  f"guidance {request.sampling.guidance_scale:g}")
        return gallery, status
    return run

def _seed_guidance_images(gr, limits: ServeLimits, defaults, prefix: str):
    """The seed box with its random button, the guidance slider and the image count of a tab."""
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id=f"{prefix}seed", scale=3)
        randomize = gr.Button("🎲 Random", elem_id=f"{prefix}random-seed", scale=1, min_width=100)
    guidance = gr.Slider(0, limits.max_guidance, value=defaults.guidance_scale,
                         step=0.1, label="Guidance scale (CFG)", elem_id=f"{prefix}guidance")
    num_images = _slider(gr, 1, limits.max_images, value=min(4, limits.max_images), step=1,
                         label="Images", elem_id=f"{prefix}num-images")
    return seed, randomize, guidance, num_images


def _slider(gr, low: int, high: int, **options):
    """A slider from `low` to `high`, or a fixed number where the limit leaves one value
    (`--max-images 1`: Gradio refuses a slider whose ends are equal)."""
    if high > low:
        return gr.Slider(low, high, **options)
    options.pop("step", None)
    return gr.Number(value=low, precision=0, interactive=False, **{k: v for k, v in options.items() if k != "value"})


def _edit_tab(gr, service: ImageService, limits: ServeLimits, defaults: SamplingConfig) -> None:
    """Upload an image, paint over the region to regenerate (inpaint), or vary the whole image."""
    config = service.pipe.model.config
    vocab, num_scales, size = config.tokenizer.vocab_size, config.num_scales, config.image_size

    def run_edit(editor, prompt, mode, strength, dilate, feather, seed, guidance_scale, num_images,
                 progress=gr.Progress()):
        try:
            request = validate_edit(
                limits, defaults, vocab, editor=editor, mode=mode, strength=strength, dilate=dilate,
                feather=feather, prompt=prompt, negative_prompt=None, seed=seed, guidance_scale=guidance_scale,
                top_k=defaults.top_k, top_p=defaults.top_p, smooth=defaults.smooth,
                head_steps=defaults.head_steps, use_residual=defaults.use_residual, num_images=num_images,
                head_temperature=defaults.head_temperature, last_scale=defaults.last_scale)
        except RequestError as error:
            raise gr.Error(str(error), title="Invalid input", print_exception=False) from None
        progress(0, desc="encoding the image")
        try:
            paths, seconds, notes = service.edit(request, _progress_hook(progress, num_scales))
        except ValueError as error:  # what the editing module says of the input
            raise gr.Error(str(error), title="Invalid input", print_exception=False) from None
        gallery = [(str(p), f"seed {request.generation.seed} · image {i + 1}") for i, p in enumerate(paths)]
        status = (f"{mode}: {len(paths)} image(s) of {size}x{size} in {seconds:.2f} s · seed "
                  f"{request.generation.seed}" + "".join(f" · {note}" for note in notes))
        return gallery, status

    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            editor = gr.ImageEditor(
                label="Image: paint over the region to regenerate", elem_id="edit-image", height=420,
                sources=["upload", "clipboard"], transforms=(), layers=False,
                brush=gr.Brush(colors=["#ff00ff"], default_size=max(4, size // 16), color_mode="fixed"))
            prompt = gr.Textbox(label="Prompt (what the painted region shows; optional for variations)",
                                lines=1, placeholder="grinning face", elem_id="edit-prompt")
            mode = gr.Radio(list(EDIT_MODES), value="inpaint", elem_id="edit-mode",
                            label="inpaint: regenerate the painted region · vary: keep the coarse scales "
                                  "of the whole image, resample the fine ones")
            strength = gr.Slider(0, 1, value=0.5, step=0.05, elem_id="edit-strength",
                                 label="Variation strength (0: the image itself, 1: a new image)")
            with gr.Accordion("Mask", open=False):
                dilate = gr.Slider(0, MAX_DILATE, value=0, step=1, elem_id="edit-dilate",
                                   label="Grow the painted region (pixels)")
                feather = gr.Slider(0, MAX_FEATHER, value=0, step=1, elem_id="edit-feather",
                                    label="Blend with the image across the border (pixels; 0: no blending)")
            seed, randomize, guidance, num_images = _seed_guidance_images(gr, limits, defaults, "edit-")
            button = gr.Button("Edit", variant="primary", elem_id="edit")
        with gr.Column(scale=3, min_width=320):
            gallery = gr.Gallery(label="Edited images", columns=4, height=520, object_fit="contain",
                                 buttons=["download", "fullscreen"], interactive=False, elem_id="edit-gallery")
            status = gr.Markdown(elem_id="edit-status")
    inputs = [editor, prompt, mode, strength, dilate, feather, seed, guidance, num_images]
    button.click(run_edit, inputs, [gallery, status], concurrency_limit=1, api_name="edit", preprocess=False)
    randomize.click(new_seed, None, seed, queue=False, api_name=False)


def launch(app, host: str, port: int, output_dir: Path, *, quiet: bool = False) -> None:
    """Serve until interrupted: no share link, no server-side rendering, local fonts only."""
    gr = import_gradio()
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no web fonts: offline
    app.launch(server_name=host, server_port=port, share=False, ssr_mode=False, quiet=quiet,
               max_file_size=MAX_UPLOAD, allowed_paths=[str(output_dir)], footer_links=[], theme=theme,
               show_error=False, mcp_server=False)
