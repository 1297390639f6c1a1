"""`clipsearch demo` (`python -m scripts.demo`, `make demo`): MNIST and emoji search on this machine.

No newcomer waits for a whole training run before the first search. Each collection is served as
soon as a short first training gives a usable model; its full recipe then trains in the background
and replaces it through the gated upgrade path, live:

1. Data: MNIST ($MNIST_DIR, else downloaded and checksum-verified into var/data/mnist) and the emoji
   collection ($EMOJI_DIR, else built from the pinned upstream packages into var/data/emoji; without
   it the demo serves MNIST alone and says why).
2. The encoder serves every model in var/models/ and picks up the ones written there later
   (ENCODER_MODELS_DIR): var/models/mnist and var/models/emoji.
3. Quick models: a collection without a model trains one briefly (MNIST: 2 epochs; emoji: a few
   minutes), writes it to var/models/<name> and indexes its collection; the gateway starts once
   MNIST, the default collection, is indexed, and the first search is answered.
4. Final models: the full recipe trains (MNIST: the measured compact recipe, then its text tower
   distilled to 2 layers; emoji: its 20-minute recipe), replaces var/models/<name>, and the indexer
   builds a new version with it, evaluates both versions on the collection's query set and moves
   the alias only when the new one is at least as good. The gateway follows without a restart.

var/demo.json records which model each collection serves (quick or final) by fingerprint, so a
second run reuses everything and trains only what is still missing (an interrupted training resumes).
Ctrl-C or SIGTERM stops every process started here.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import ClassVar, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from clipsearch.bootstrap import ServiceSettings, run_service
from clipsearch.checkpoint_files import copy_checkpoint, is_checkpoint, weights_fingerprint
from clipsearch.datasets import DatasetError, load_mnist, read_emoji
from clipsearch.processes import ServiceError, ServiceGroup, grpc_serving, http_ready, poll_until, run, start
from clipsearch.store import open_store

VAR = Path("var")
MODELS_DIR = VAR / "models"  # what the encoder serves, one directory per collection
CHECKPOINTS = VAR / "checkpoints"  # training outputs (and their resumable state)
STATE_FILE = VAR / "demo.json"
STORE_PATH = VAR / "qdrant"
MEDIA_DIR = VAR / "media"
CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"  # the measured recipes
DISTILLED_TEXT_LAYERS = "2"  # of MiniLM's 6: the measured trade (training/distill.py, README)
STARTUP_TIMEOUT_S = 300.0
MODEL_WAIT_S = 600.0  # how long the indexer waits for the encoder to load a new model
COLLECTIONS = ("mnist", "emoji")
Stage = Literal["quick", "final", "given"]


class DemoSettings(ServiceSettings):
    """MNIST and emoji search on this machine, end to end: quick models served first, final models
    trained in the background and swapped in live; http://localhost:8080."""

    model_config = SettingsConfigDict(env_prefix="DEMO_")
    env_fallbacks: ClassVar[dict[str, str]] = {
        "mnist_dir": "MNIST_DIR",
        "emoji_dir": "EMOJI_DIR",
        "checkpoint": "CHECKPOINT",
    }

    collections: str = ",".join(COLLECTIONS)
    """The collections to serve, comma-separated (mnist is the default collection)."""
    mnist_dir: Path | None = None
    """MNIST idx files; unset: $MNIST_DIR, else var/data/mnist, downloaded and checksum-verified."""
    emoji_dir: Path | None = None
    """The emoji collection; unset: $EMOJI_DIR, else var/data/emoji, built from the upstream packages."""
    checkpoint: str | None = None
    """A model to serve for MNIST as it is (no training); unset: $CHECKPOINT, else trained here."""
    final_models: bool = True
    """Train the full recipes in the background and swap them in (--no-final-models: quick ones only)."""
    mnist_config: Path = CONFIGS / "mnist-compact.yaml"
    """The MNIST recipe (training/configs): its first model is a few epochs of it, the final one all."""
    emoji_config: Path = CONFIGS / "emoji-compact.yaml"
    """The emoji recipe: its first model is a few minutes of it, the final one its whole budget."""
    mnist_quick_epochs: int = Field(default=2, ge=1)
    """Epochs of the first MNIST model (the full recipe's schedule, shortened)."""
    emoji_quick_minutes: float = Field(default=3.0, gt=0)
    """Minutes of training for the first emoji model."""
    mnist_minutes: float = Field(default=20.0, gt=0)
    """At most this long training the final MNIST model (its recipe takes 8 minutes on 2 quiet cores)."""
    emoji_minutes: float = Field(default=20.0, gt=0)
    """Minutes of training for the final emoji model (its recipe's budget)."""
    distill_steps: int = Field(default=500, ge=1)
    """Steps distilling the final MNIST model's text tower to 2 layers."""
    encoder_port: int = Field(default=50051, ge=1, le=65535)
    http_port: int = Field(default=8080, ge=1, le=65535)
    grpc_port: int = Field(default=50052, ge=1, le=65535)
    host: str = "127.0.0.1"
    """Where the gateway listens (0.0.0.0: every interface)."""
    index_limit: int | None = Field(default=None, ge=1)
    """Index only the first N MNIST test images (smoke runs); unset: all 10,000."""

    @field_validator("collections")
    @classmethod
    def _known_collections(cls, value: str) -> str:
        asked = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(asked) - set(COLLECTIONS))
        if unknown or not asked:
            raise ValueError(f"collections {unknown or value!r}: choose from {', '.join(COLLECTIONS)}")
        return ",".join(asked)

    def wanted(self) -> list[str]:
        return self.collections.split(",")


class DemoError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# --- what each collection is made of ----------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One job of a model's recipe: `python -m module *args`."""

    what: str
    module: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Recipe:
    """How a model is made: its steps, and the checkpoint the last one writes."""

    steps: tuple[Step, ...]
    output: Path
    about: str  # for the user: what it is and how long it takes


@dataclass
class Collection:
    name: str
    index_env: dict[str, str]  # INDEXER_* for its source
    quick: Recipe
    final: Recipe
    given: Path | None = None  # a model to serve as it is (settings.checkpoint)


def train(what: str, config: str, output: Path, *args: str) -> Step:
    """A training run of `config` into `output`, resumed where an interrupted one stopped."""
    return Step(what, "training", ("train", "--config", config, "--output", str(output), *args, "--resume"))


def mnist_collection(settings: DemoSettings, data: Path) -> Collection:
    config = str(settings.mnist_config)
    quick_out, final_out = CHECKPOINTS / "mnist-quick", CHECKPOINTS / "mnist-final"
    distilled = CHECKPOINTS / "mnist-final-distilled"
    source = ("--mnist-dir", str(data), "--no-progress")
    quick_epochs = ("--epochs", str(settings.mnist_quick_epochs))
    budget = ("--max-minutes", f"{settings.mnist_minutes:g}")
    distill = ("--layers", DISTILLED_TEXT_LAYERS, "--steps", str(settings.distill_steps), "--no-progress")
    return Collection(
        name="mnist",
        index_env={
            "INDEXER_SOURCE": "mnist",
            "INDEXER_MNIST_DIR": str(data),
            "INDEXER_MNIST_SPLIT": "test",
            **({"INDEXER_LIMIT": str(settings.index_limit)} if settings.index_limit else {}),
        },
        quick=Recipe(
            steps=(train("training a first MNIST model", config, quick_out, *source, *quick_epochs),),
            output=quick_out,
            about=f"{settings.mnist_quick_epochs} epochs of {settings.mnist_config.name}",
        ),
        final=Recipe(
            steps=(
                train("training the final MNIST model", config, final_out, *source, *budget),
                Step(
                    "distilling its text tower to 2 layers",
                    "training",
                    ("distill-text", str(final_out), "--output", str(distilled), *distill),
                ),
            ),
            output=distilled,
            about=f"{settings.mnist_config.name} and a 2-layer text tower",
        ),
        given=Path(settings.checkpoint) if settings.checkpoint else None,
    )


def emoji_collection(settings: DemoSettings, data: Path) -> Collection:
    config = str(settings.emoji_config)
    quick_out, final_out = CHECKPOINTS / "emoji-quick", CHECKPOINTS / "emoji-final"
    # One thread: on 2 cores shared with the serving processes, a second one costs more than it gives.
    source = ("--emoji-dir", str(data), "--threads", "1", "--no-progress")
    quick_budget = ("--max-minutes", f"{settings.emoji_quick_minutes:g}")
    budget = ("--max-minutes", f"{settings.emoji_minutes:g}")
    return Collection(
        name="emoji",
        index_env={"INDEXER_SOURCE": "emoji", "INDEXER_EMOJI_DIR": str(data)},
        quick=Recipe(
            steps=(train("training a first emoji model", config, quick_out, *source, *quick_budget),),
            output=quick_out,
            about=f"{settings.emoji_quick_minutes:g} minutes of {settings.emoji_config.name}",
        ),
        final=Recipe(
            steps=(train("training the final emoji model", config, final_out, *source, *budget),),
            output=final_out,
            about=f"{settings.emoji_minutes:g} minutes of {settings.emoji_config.name}",
        ),
    )


# --- what is served: var/demo.json ---------------------------------------------------------------


@dataclass
class Served:
    """Which model var/models/<name> holds, by fingerprint: a first one, or the final one."""

    models: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def read(cls) -> Served:
        try:
            return cls(json.loads(STATE_FILE.read_text()))
        except (OSError, ValueError):
            return cls()

    def stage(self, name: str) -> Stage | None:
        """The stage of the model now in var/models/<name>; None when there is none (or another)."""
        model_dir = MODELS_DIR / name
        entry = self.models.get(name)
        if (
            entry is None
            or not is_checkpoint(model_dir)
            or entry["fingerprint"] != weights_fingerprint(model_dir)
        ):
            return None
        stage: Stage = entry["stage"]  # type: ignore[assignment]
        return stage

    def record(self, name: str, stage: Stage) -> str:
        fingerprint = weights_fingerprint(MODELS_DIR / name)
        self.models[name] = {"stage": stage, "fingerprint": fingerprint}
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps(self.models, indent=1) + "\n")
        return fingerprint


# --- the steps ----------------------------------------------------------------------------------


def run_step(what: str, module: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """Run a job to completion (its output goes to ours); a failure ends the demo."""
    say(f"{what}: python -m {module} {' '.join(args)}")
    completed = run(module, *args, env=env, capture=False)
    if completed.returncode != 0:
        raise DemoError(f"{what} failed with exit code {completed.returncode}")


def ensure_mnist(settings: DemoSettings) -> Path:
    directory = settings.mnist_dir or VAR / "data" / "mnist"
    try:
        split = load_mnist(directory, "test", download=settings.mnist_dir is None)
    except DatasetError as exc:
        raise DemoError(str(exc)) from None
    say(f"MNIST: {len(split.labels)} test images in {directory}")
    return directory


def find_emoji(settings: DemoSettings) -> Path | None:
    """The emoji collection, downloaded when it is not configured; None (and why) when unavailable."""
    directory = settings.emoji_dir or VAR / "data" / "emoji"
    try:
        found = read_emoji(directory, download=settings.emoji_dir is None, check_images=False)
    except DatasetError as exc:
        say(f"emoji: not served ({exc})")
        return None
    say(f"emoji: {len(found.concepts)} concepts, {len(found.items)} images in {directory}")
    return directory


def make_model(collection: Collection, recipe: Recipe) -> None:
    for step in recipe.steps:
        run_step(f"{collection.name}: {step.what}", step.module, step.args)
    if not is_checkpoint(recipe.output):
        raise DemoError(f"{collection.name}: the recipe finished but wrote no checkpoint to {recipe.output}")


def install(collection: Collection, checkpoint: Path, stage: Stage, served: Served) -> str:
    """Put `checkpoint` in var/models/<name>, where the encoder picks it up; returns its fingerprint."""
    copy_checkpoint(checkpoint, MODELS_DIR / collection.name)
    fingerprint = served.record(collection.name, stage)
    say(
        f"{collection.name}: serving the {stage} model {fingerprint[:12]} from {MODELS_DIR / collection.name}"
    )
    return fingerprint


def live_fingerprint(name: str) -> str | None:
    """The fingerprint of the model that built the collection's live version (None: not indexed).
    The embedded store is shared: this works while the gateway serves it."""
    store = open_store(None, STORE_PATH)
    try:
        live = store.collection_info(name)
    finally:
        store.close()
    return live.fingerprint if live is not None else None


def index(collection: Collection, encoder: str, fingerprint: str, *, gateway_running: bool) -> None:
    """Index the collection with the model `fingerprint`. Its first index is published as it is; an
    index with another model than the live version's is an upgrade, published only when it evaluates
    at least as well. A live version this model built is only completed, by an incremental run that
    writes into it, so before the gateway holds it."""
    if live_fingerprint(collection.name) == fingerprint:
        if gateway_running:
            say(f"{collection.name}: already indexed with this model")
            return
        mode = "incremental"
    else:
        mode = "full"
    run_step(
        f"{collection.name}: indexing ({mode})",
        "services.indexer",
        ["--no-progress"],
        {
            **collection.index_env,
            "INDEXER_ENCODER": encoder,
            "INDEXER_STORE_PATH": str(STORE_PATH),
            "INDEXER_MEDIA_DIR": str(MEDIA_DIR),
            "INDEXER_COLLECTION": collection.name,
            "INDEXER_MODEL": fingerprint,
            "INDEXER_MODEL_WAIT_S": f"{MODEL_WAIT_S:g}",
            "INDEXER_MODE": mode,
        },
    )


def wait_until(description: str, ready: Callable[[], bool], services: ServiceGroup) -> None:
    if not poll_until(ready, services.check_running, STARTUP_TIMEOUT_S, interval_s=0.5):
        raise DemoError(f"{description} did not become ready in {STARTUP_TIMEOUT_S:.0f} s")


class Demo:
    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.services = ServiceGroup(say)
        self.served = Served.read()
        self.encoder = f"127.0.0.1:{settings.encoder_port}"
        self.started = time.monotonic()
        self.gateway_running = False

    def elapsed(self) -> str:
        seconds = time.monotonic() - self.started
        return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"

    def collections(self) -> list[Collection]:
        wanted = self.settings.wanted()
        found: list[Collection] = []
        if "mnist" in wanted:
            found.append(mnist_collection(self.settings, ensure_mnist(self.settings)))
        if "emoji" in wanted and (emoji_dir := find_emoji(self.settings)) is not None:
            found.append(emoji_collection(self.settings, emoji_dir))
        if not found:
            raise DemoError("no collection to serve")
        return found

    def first_model(self, collection: Collection) -> str:
        """The model var/models/<name> serves now, made quickly when there is none; its fingerprint."""
        stage = self.served.stage(collection.name)
        if collection.given is not None:
            if stage != "given" or self.served.models[collection.name]["fingerprint"] != weights_fingerprint(
                collection.given
            ):
                return install(collection, collection.given, "given", self.served)
        elif stage is None:
            say(f"{collection.name}: no model yet; training a first one ({collection.quick.about})")
            make_model(collection, collection.quick)
            return install(collection, collection.quick.output, "quick", self.served)
        fingerprint = self.served.models[collection.name]["fingerprint"]
        say(f"{collection.name}: the {stage} model {fingerprint[:12]} (already made)")
        return fingerprint

    def start_encoder(self) -> None:
        say(f"starting the encoder on {self.encoder}, serving the models in {MODELS_DIR}/")
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        env = {
            "ENCODER_MODELS_DIR": str(MODELS_DIR),
            "ENCODER_RELOAD_S": "2",
            "ENCODER_HOST": "127.0.0.1",
            "ENCODER_PORT": str(self.settings.encoder_port),
            "ENCODER_METRICS_PORT": "0",
        }
        self.services.add(start("services.encoder", env=env, name="encoder"))
        wait_until("the encoder", lambda: grpc_serving(self.encoder), self.services)

    def start_gateway(self) -> None:
        settings = self.settings
        env = {
            "GATEWAY_ENCODER": self.encoder,
            "GATEWAY_STORE_PATH": str(STORE_PATH),
            "GATEWAY_MEDIA_DIR": str(MEDIA_DIR),
            "GATEWAY_COLLECTION": settings.wanted()[0],
            "GATEWAY_HOST": settings.host,
            "GATEWAY_HTTP_PORT": str(settings.http_port),
            "GATEWAY_GRPC_PORT": str(settings.grpc_port),
        }
        say("starting the gateway")
        self.services.add(start("services.gateway", env=env, name="gateway"))
        port = settings.http_port
        wait_until("the gateway", lambda: http_ready(f"http://127.0.0.1:{port}/readyz"), self.services)
        self.gateway_running = True
        host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
        base = f"http://{host}:{port}"
        say(
            f"ready {self.elapsed()} after the start: open {base}/  (API docs {base}/docs, gRPC on port "
            f"{settings.grpc_port}); Ctrl-C stops everything"
        )

    def status(self, collections: Sequence[Collection]) -> None:
        served = ", ".join(f"{c.name} ({self.served.stage(c.name) or 'not yet'} model)" for c in collections)
        training = [c.name for c in collections if self.served.stage(c.name) == "quick"]
        waiting = f"; still to train: final {' and '.join(training)}" if training else ""
        say(f"serving: {served}{waiting}")

    def upgrade(self, collection: Collection) -> None:
        """The final model, trained now (resumed if a run was interrupted), swapped in through the
        indexer's gate. Should it evaluate worse than the first model, the first one stays."""
        say(f"{collection.name}: training the final model in the background ({collection.final.about})")
        make_model(collection, collection.final)
        fingerprint = install(collection, collection.final.output, "final", self.served)
        index(collection, self.encoder, fingerprint, gateway_running=self.gateway_running)
        if live_fingerprint(collection.name) != fingerprint:
            say(f"{collection.name}: the final model evaluated worse than the first one, which stays")
            copy_checkpoint(collection.quick.output, MODELS_DIR / collection.name)
            self.served.record(collection.name, "final")  # decided: nothing more to train
            return
        say(f"{collection.name}: final model in place {self.elapsed()} after the start")

    def run(self) -> None:
        collections = self.collections()
        first = {collection.name: self.first_model(collection) for collection in collections[:1]}
        self.start_encoder()
        for collection in collections:
            fingerprint = first.get(collection.name) or self.first_model(collection)
            index(collection, self.encoder, fingerprint, gateway_running=self.gateway_running)
            if not self.gateway_running:
                self.start_gateway()
            self.status(collections)
        if self.settings.final_models:
            for collection in collections:
                if self.served.stage(collection.name) == "quick":
                    self.upgrade(collection)
                    self.status(collections)
        say(f"all models in place {self.elapsed()} after the start; serving until Ctrl-C")
        while True:
            self.services.check_running()
            time.sleep(1.0)


def demo(settings: DemoSettings) -> int:
    runner = Demo(settings)

    def stop(signum: int, frame: FrameType | None) -> None:
        # Only the first signal interrupts: a second one (Ctrl-C pressed twice, or a supervisor and
        # its timeout both signalling) would otherwise break into the stopping itself, with a
        # traceback and children left running. stop_all kills what does not stop in time.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        runner.run()
    except KeyboardInterrupt:
        say("interrupted")
        return 0
    except (DemoError, ServiceError) as exc:
        say(f"error: {exc}")
        return 1
    finally:
        runner.services.stop_all()
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "clipsearch demo") -> int:
    return run_service("demo", DemoSettings, demo, argv=argv, prog=prog)
