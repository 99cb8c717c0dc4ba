"""Model names -> local folders: the shipped default, a local folder, or a Hugging Face Hub repo.

Every model argument of openhart (`HARTPipeline.from_pretrained`, `--model` of generate, serve,
eval, convert and reconstruct, and `openhart download`) goes through `resolve_model`. A name is

- nothing (None): the small emoji model that ships with openhart;
- a local folder in openhart's layout (config.json + model.safetensors) or in the official one
  (llm/ + tokenizer/);
- a Hub repo id `owner/name`, optionally `owner/name@revision` (branch, tag or commit).

Hub repos are fetched with huggingface_hub into its cache (HF_HOME, HF_HUB_CACHE), only the
files the model needs, with its progress bars; later calls reuse the cache, and work offline
(HF_HUB_OFFLINE=1) once it holds them. HF_TOKEN opens gated or private repos, HF_ENDPOINT points
at a mirror. Text encoders go through `resolve_text_encoder` the same way.

Failures are `HubError`s (ValueErrors, so the commands print one line and exit with code 2): what
is missing and the command or folder that fixes it.
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                    RepositoryNotFoundError, RevisionNotFoundError)

from .default_model import default_model_dir
from .inputs import read_json
from .layout import (LLM_EMA_WEIGHTS, LLM_RAW_WEIGHTS, has_llm_weights, is_official_folder, is_openhart_model,
                     official_root)
from .text.encoder import PACKAGED_ENCODERS, SYSTEM_PROMPT_FILE

# The text encoder of the official models, by Hub id.
OFFICIAL_TEXT_ENCODER = "mit-han-lab/Qwen2-VL-1.5B-Instruct"
# `text_encoder` value that builds a seeded random encoder (demos and tests).
RANDOM_TEXT_ENCODER = "random"
# The files of a model repo that a pipeline reads: openhart's layout, then the official one.
OPENHART_PATTERNS = ("config.json", "model.safetensors", "README.md", SYSTEM_PROMPT_FILE)
OFFICIAL_PATTERNS = ("llm/config.json", "tokenizer/*", SYSTEM_PROMPT_FILE)
# The files of a LoRA adapter repo (peft's two files and openhart's record), at its root or in
# the lora/ folder of an uploaded finetune run.
ADAPTER_PATTERNS = ("adapter_config.json", "adapter_model.safetensors", "openhart_adapter.json",
                    "lora/adapter_config.json", "lora/adapter_model.safetensors", "lora/openhart_adapter.json")
# The files of a text encoder repo: configs, tokenizer files and safetensors weights (never
# pickled .bin files).
TEXT_ENCODER_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken")

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")


class HubError(ValueError):
    """A model or text encoder that cannot be found locally or fetched from the Hub."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model name resolved to a local folder.

    Attributes:
        path: the folder to load (openhart layout, or the official layout's root).
        name: a short display name: the repo id (with @revision) or the folder's name.
        hub_id: the repo id with its revision, when the model came from the Hub.
        official: whether the folder is in the official layout.
        text_encoder: the text encoder the model names (a spec for `resolve_text_encoder`):
            the one an openhart folder records, `OFFICIAL_TEXT_ENCODER` for the official layout,
            None when an openhart folder records none.
    """

    path: Path
    name: str
    hub_id: str | None
    official: bool
    text_encoder: str | None


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """(repo_id, revision) of `owner/name[@revision]`, or None if `name` is not of that form."""
    match = _HUB_ID.match(name)
    if match is None or ".." in name:
        return None
    return match["repo"], match["revision"]


def resolve_model(name: str | os.PathLike | None = None, *, weights: str = "auto") -> ResolvedModel:
    """The local folder of a model name (see the module docstring), fetched from the Hub if needed.

    Args:
        weights: for official models, which transformer weights to fetch: "auto" and "ema" the
            EMA weights (the raw ones when a repo has no EMA file and `weights` is "auto"),
            "raw" the raw ones.
    """
    if weights not in ("auto", "ema", "raw"):
        raise ValueError(f"weights must be 'auto', 'ema' or 'raw', got {weights!r}")
    if name is None:
        folder = default_model_dir()
        return _local(folder, folder.name, None)
    path = Path(name)
    if path.exists():
        if not path.is_dir():
            raise HubError(f"{path} is a file; pass the model folder (with config.json, or llm/ and tokenizer/)")
        return _local(path, path.resolve().name, None)
    hub = parse_hub_id(str(name))
    if hub is None:
        raise HubError(f"model folder not found: {name} (pass a folder with config.json, or llm/ and "
                       "tokenizer/ for the official release, or a Hub repo id such as "
                       "mit-han-lab/hart-0.7b-1024px)")
    repo_id, revision = hub
    folder = _download(repo_id, revision, [*OPENHART_PATTERNS, *OFFICIAL_PATTERNS, *_llm_weights(weights)],
                       what="model")
    if is_official_folder(folder) and not has_llm_weights(folder):
        if weights == "auto":  # a repo without EMA weights: take the raw ones
            folder = _download(repo_id, revision, [*OFFICIAL_PATTERNS, *_llm_weights("raw")], what="model")
        if not has_llm_weights(folder):
            raise HubError(f"{repo_id} has no {' or '.join('llm/' + n for n in _llm_weights(weights))}; "
                           "try --weights raw or --weights ema")
    if not is_official_folder(folder) and not is_openhart_model(folder):
        raise HubError(f"{repo_id} is not a HART model: it has neither an openhart config.json and "
                       "model.safetensors nor llm/ and tokenizer/ (the official layout)")
    return _local(folder, str(name), str(name))


def resolve_tokenizer(name: str | os.PathLike) -> Path:
    """A tokenizer folder (or a model folder holding tokenizer/) as given; for a Hub repo id,
    only its tokenizer files are fetched."""
    path = Path(name)
    if path.exists():
        return path
    hub = parse_hub_id(str(name))
    if hub is None:
        raise HubError(f"tokenizer folder not found: {name} (pass a tokenizer folder, a model folder "
                       "with tokenizer/, or a Hub repo id such as mit-han-lab/hart-0.7b-1024px)")
    return _download(hub[0], hub[1], ["tokenizer/*", "config.json", "model.safetensors"], what="tokenizer")


def resolve_adapter(name: str | os.PathLike) -> tuple[Path, str | None]:
    """(local folder, Hub id or None) of a LoRA adapter given as a folder (an adapter folder or a
    finetune run folder) or a Hub repo id `owner/name[@revision]`; Hub adapters are fetched like
    models (same cache, same offline rule), only their adapter files."""
    path = Path(name)
    if path.exists():
        return path, None
    hub = parse_hub_id(str(name))
    if hub is None:
        raise HubError(f"adapter not found: {name} (pass an adapter folder with adapter_config.json, a "
                       "finetune run folder, or a Hub repo id such as owner/my-hart-lora)")
    folder = _download(hub[0], hub[1], list(ADAPTER_PATTERNS), what="adapter")
    if not (folder / "adapter_config.json").is_file() and not (folder / "lora" / "adapter_config.json").is_file():
        raise HubError(f"{name} is not a LoRA adapter: it has no adapter_config.json")
    return folder, str(name)


def resolve_text_encoder(spec: str | os.PathLike) -> str:
    """A text encoder spec as `load_prompt_encoder` takes it: "random", a packaged encoder's name
    and local folders as given; a Hub repo id fetched (safetensors weights, configs, tokenizer)
    and replaced by its local folder."""
    text = str(spec)
    if text == RANDOM_TEXT_ENCODER or text in PACKAGED_ENCODERS or Path(text).exists():
        return text
    hub = parse_hub_id(text)
    if hub is None:
        raise HubError(f"text encoder not found: {text} (pass a local Hugging Face folder, a Hub repo id "
                       f"such as {OFFICIAL_TEXT_ENCODER}, {', '.join(PACKAGED_ENCODERS)} or 'random')")
    return str(_download(hub[0], hub[1], list(TEXT_ENCODER_PATTERNS), what="text encoder"))


def recorded_text_encoder(folder: str | os.PathLike) -> str | None:
    """The text encoder an openhart model folder names in its config.json ("random", a packaged
    encoder's name, a folder or a Hub id); None when it names none."""
    spec = recorded_text_encoder_spec(folder)
    if spec is None:
        return None
    return RANDOM_TEXT_ENCODER if spec["kind"] == "random" else spec["path"]


def model_text_encoder_spec(source: ResolvedModel) -> dict | None:
    """The `text_encoder` entry a model folder made from `source` records: the official
    encoder for the official layout, else the one its config.json records (None if none)."""
    if source.official:
        return {"kind": "huggingface", "path": OFFICIAL_TEXT_ENCODER}
    return recorded_text_encoder_spec(source.path)


def recorded_text_encoder_spec(folder: str | os.PathLike) -> dict | None:
    """The `text_encoder` entry of a model folder's config.json, checked; None when the folder
    has no config.json or its config names no text encoder."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    data = read_json(config, "config file", error=HubError)
    spec = data.get("text_encoder")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("kind") not in ("random", "huggingface") or (
            spec.get("kind") == "huggingface" and not isinstance(spec.get("path"), str)):
        raise HubError(f"{config}: 'text_encoder' must be {{\"kind\": \"random\"}} or "
                       f"{{\"kind\": \"huggingface\", \"path\": NAME}}, got {spec!r}")
    return spec


# ----- helpers -------------------------------------------------------------------------------------

def _local(folder: Path, name: str, hub_id: str | None) -> ResolvedModel:
    is_official = official_root(folder) is not None
    if not is_official and not (folder / "config.json").is_file():
        raise HubError(f"{folder} is not a model folder: expected config.json and model.safetensors "
                       "(openhart's layout) or llm/ and tokenizer/ (the official layout)")
    text_encoder = OFFICIAL_TEXT_ENCODER if is_official else recorded_text_encoder(folder)
    return ResolvedModel(path=folder, name=name, hub_id=hub_id, official=is_official, text_encoder=text_encoder)


def _llm_weights(weights: str) -> list[str]:
    names = LLM_RAW_WEIGHTS if weights == "raw" else (LLM_EMA_WEIGHTS,)
    return ["llm/" + name for name in names]


def _download(repo_id: str, revision: str | None, patterns: list[str], *, what: str) -> Path:
    """snapshot_download of the matching files; huggingface_hub's errors become one-line HubErrors.

    A failed download leaves no partial file behind: huggingface_hub writes each file as
    `blobs/*.incomplete` and renames it when complete; those left by this call are removed.
    """
    # lazy: huggingface_hub's download API adds ~0.5 s to every start of openhart
    from huggingface_hub import snapshot_download

    label = repo_id if revision is None else f"{repo_id}@{revision}"
    fix = f"run `openhart download {label}` where the Hub can be reached"
    cache = Path(constants.HF_HUB_CACHE)
    blobs = cache / f"models--{repo_id.replace('/', '--')}" / "blobs"
    before = set(blobs.glob("*.incomplete")) if blobs.is_dir() else set()
    install_timeouts()
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except GatedRepoError as error:
        raise HubError(f"{label} is gated: accept its terms on the Hub, then set HF_TOKEN "
                       "(or run `hf auth login`)") from error
    except RevisionNotFoundError as error:
        raise HubError(f"{label}: revision {revision!r} not found on the Hub") from error
    except RepositoryNotFoundError as error:
        raise HubError(f"{what} {repo_id} not found on the Hub (or private: set HF_TOKEN); for a local "
                       "folder, check the path") from error
    except LocalEntryNotFoundError as error:
        offline = constants.HF_HUB_OFFLINE
        reason = ("offline mode is on (HF_HUB_OFFLINE=1)" if offline else
                  f"the Hub at {constants.ENDPOINT} cannot be reached (no answer within {hub_timeout():g} s, "
                  f"${HUB_TIMEOUT_ENV})")
        raise HubError(f"{what} {label} is not in the Hugging Face cache ({cache}) and {reason}: "
                       f"{fix}, or pass a local folder") from error
    except (EntryNotFoundError, HfHubHTTPError, OSError, *_transport_errors()) as error:
        raise HubError(f"cannot download {what} {label}: {_first_line(error)}; {fix}, or pass a local "
                       "folder") from error
    finally:
        if blobs.is_dir():
            for partial in set(blobs.glob("*.incomplete")) - before:
                partial.unlink(missing_ok=True)


# ----- timeouts ------------------------------------------------------------------------------------

HUB_TIMEOUT_ENV = "OPENHART_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 30.0  # seconds: to connect, between two bytes, and before the rate floor applies
MIN_HUB_RATE = 1024  # bytes per second on average, after the first timeout: a dripping endpoint ends


def hub_timeout() -> float:
    """The Hub timeout in seconds: $OPENHART_HUB_TIMEOUT, or 30."""
    text = os.environ.get(HUB_TIMEOUT_ENV)
    if text is None:
        return DEFAULT_HUB_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:
        raise HubError(f"{HUB_TIMEOUT_ENV} must be a number of seconds in (0, 3600], got {text!r}")
    return value


def install_timeouts() -> None:
    """Give huggingface_hub's HTTP client timeouts (its default client has none, so an endpoint
    that accepts a connection and never answers hangs it): connect and read timeouts of
    `hub_timeout()`, and a floor of MIN_HUB_RATE bytes/s on every response after that long, so
    that an endpoint dripping a byte a second ends too. Each ends as a timeout error that names
    the URL. Does nothing on huggingface_hub versions without `set_client_factory`. Installed
    once per process and timeout (huggingface_hub's shared session then stays open)."""
    _install_timeouts(hub_timeout())


@functools.cache
def _install_timeouts(seconds: float) -> None:
    try:
        # lazy: which HTTP client depends on huggingface_hub's version
        import httpx2 as httpx
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:
        return
    probe = default_client_factory()
    hooks = probe.event_hooks  # huggingface_hub's request hook (its headers)
    probe.close()

    class RateFloor(httpx.SyncByteStream):
        """A response body that raises a read timeout when it arrives slower than MIN_HUB_RATE."""

        def __init__(self, stream, request, started: float):
            self.stream, self.request, self.started = stream, request, started

        def __iter__(self):
            received = 0
            for chunk in self.stream:
                received += len(chunk)
                elapsed = time.monotonic() - self.started
                if elapsed > seconds and received < MIN_HUB_RATE * elapsed:
                    raise httpx.ReadTimeout(f"{self.request.url} sent {received} bytes in {elapsed:.0f} s, "
                                            f"slower than {MIN_HUB_RATE} bytes/s", request=self.request)
                yield chunk

        def close(self):
            self.stream.close()

    class StallGuard(httpx.HTTPTransport):
        def handle_request(self, request):
            # huggingface_hub passes timeout=None on some calls, which overrides a client default
            limits = dict(request.extensions.get("timeout") or {})
            request.extensions["timeout"] = {k: seconds if limits.get(k) is None else limits[k]
                                             for k in ("connect", "read", "write", "pool")}
            started = time.monotonic()
            response = super().handle_request(request)
            response.stream = RateFloor(response.stream, request, started)
            return response

    def factory():
        return httpx.Client(event_hooks=hooks, follow_redirects=True, transport=StallGuard(),
                            timeout=httpx.Timeout(seconds))

    set_client_factory(factory)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's connection errors (httpx2 for huggingface_hub 2.x, httpx before)."""
    for module in ("httpx2", "httpx"):
        try:
            return (__import__(module).HTTPError,)
        except ImportError:
            continue
    return ()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
