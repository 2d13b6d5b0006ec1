"""The four benchmarks as one item schema: MathVista, MathVision, MMStar and MMMU.

:func:`load_benchmark` reads a benchmark from the Hugging Face Hub (``datasets.load_dataset``,
streaming the requested split only: nothing of the other splits is downloaded; the split's size is
printed first and a progress bar follows the rows) or from a local export, and returns
:class:`Item` objects whose gold answer is an option *letter* for multiple choice and the answer
text otherwise.

Column layouts assumed (those of the Hub datasets; exports keep the same column names):

- **MathVista** (``AI4Math/MathVista``, split ``testmini``; ``test`` withholds its answers): ``pid``,
  ``question``, ``image`` (relative path such as ``images/1.jpg``), ``decoded_image`` (the image),
  ``choices`` (option texts, null for free-form), ``unit``, ``precision`` (decimals of a float
  answer), ``answer`` (the option *text* for multiple choice, mapped here to its letter),
  ``question_type`` (``multi_choice`` | ``free_form``), ``answer_type`` (``integer`` | ``float`` |
  ``text`` | ``list``; ``list`` becomes ``text``), ``metadata`` (``task``, ``skills``, ``category``,
  ``context``, ``grade``, ``source``, ...), ``query`` (the question with MathVista's answer-format
  hint). Free-form items use ``query`` as the question (its hint says integer / decimals / list),
  rebuilt by :func:`mathvista_query` when the row has none (MathVista's GitHub JSON);
  multiple-choice items use ``question`` (the options travel separately). Category: ``metadata.task``.
- **MathVision** (``MathLLMs/MathVision``, splits ``testmini`` (304) and ``test`` (3040, "full")):
  ``id``, ``question``, ``options`` (texts for letters A-E, empty when free-form), ``image`` (path),
  ``decoded_image``, ``answer`` (a letter, or the value), ``solution``, ``level``, ``subject``.
  Category: ``subject``.
- **MMStar** (``Lin-Chen/MMStar``, config and split ``val``): ``index``, ``question`` (with the
  options inside its text: ``"...\\nOptions: A: ..., B: ..., C: ..., D: ..."``, split off here by
  :func:`split_inline_options`), ``image``, ``answer`` (a letter), ``category``, ``l2_category``,
  ``meta_info`` (``source``, ``split``, ``image_path``). Category: ``category``. A row whose options
  cannot be found is skipped with a warning that counts them (:class:`UnparsableRow`).
- **MMMU** (``MMMU/MMMU``, one config per subject; all 30 are loaded in alphabetical order, split
  ``validation``; ``dev`` also has answers; a ``limit`` takes the subjects in turn, round-robin,
  so 60 items are 2 per subject, not Accounting and Agriculture): ``id``
  (``validation_<Subject>_<n>``, the subject is read from it), ``question`` (with ``<image k>``
  placeholders), ``options`` (a string repr of a list, e.g. ``"['1', '2']"``), ``image_1`` ..
  ``image_7`` (null when absent; as lmms-eval, the images the question and options name by
  ``<image k>`` are kept, by number, all present ones when none is named; the placeholders stay
  in the text and the images go before it, ``metadata["image_placement"]`` says which; no backend
  here interleaves images inside the text as VLMEvalKit does), ``answer`` (a letter, or the
  value; an open answer written as a list repr lists equivalent golds), ``question_type``
  (``multiple-choice`` | ``open``), ``subfield``, ``topic_difficulty``, ``img_type``.
  Category: the subject; ``metadata["discipline"]`` is its MMMU discipline.

Known-bad gold items (:data:`KNOWN_BAD_ITEMS`: MathVision 2830, 59, 434; MathVista 740, 781) are
repaired as they load, marked in ``metadata["gold_fix"]`` and logged.

Images may come as PIL images (``datasets`` decodes them; CMYK, palette and other modes are
converted to RGB or RGBA), ``{"bytes": ..., "path": ...}`` dicts
(parquet exports), raw bytes, or path strings. Embedded images are written once to a
content-addressed cache folder (``image_cache``, default ``$CATTS_CACHE_DIR/images`` or
``~/.cache/catts_graph/images``), so items carry short, stable file paths; relative paths are
resolved against ``image_dir``, then the data file's folder, then the source folder.

A local ``source`` is a ``.json`` (a list of rows, ``{"data": [...]}``, or ``{id: row}`` as in
MathVista's own ``testmini.json``), ``.jsonl`` or ``.parquet`` file, a folder of them (a Hub snapshot
such as ``hf download AI4Math/MathVista --repo-type dataset --local-dir DIR``; files named after
another split, ``test-00000-of-00001.parquet`` when ``testmini`` is asked for, are skipped), or a
folder written by ``Dataset.save_to_disk``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from catts_graph.answers import is_equivalent
from catts_graph.hub import hub_unreachable
from catts_graph.task import ANSWER_TYPES, Item

__all__ = [
    "ANSWER_TYPES",
    "BENCHMARKS",
    "DatasetUnavailable",
    "HUB_BENCHMARKS",
    "KNOWN_BAD_ITEMS",
    "Item",
    "KnownBadItem",
    "MMMU_DISCIPLINES",
    "UnparsableRow",
    "load_benchmark",
    "mathvista_query",
    "split_inline_options",
]

_LOG = logging.getLogger(__name__)

HUB_BENCHMARKS: tuple[str, ...] = ("mathvista", "mathvision", "mmstar", "mmmu")
"""The benchmarks read from the Hub or a local export."""
BENCHMARKS: tuple[str, ...] = (*HUB_BENCHMARKS, "synthetic")
"""Every benchmark :func:`load_benchmark` knows: the Hub ones, and the generated
:mod:`catts_graph.eval.synthetic` (splits ``train``, ``validation``, ``test``; no ``source``)."""
_LETTERS = string.ascii_uppercase

MMMU_DISCIPLINES: dict[str, tuple[str, ...]] = {
    "Art & Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health & Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities & Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech & Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}
"""MMMU's six disciplines and their 30 subjects (the Hub configs, and the subject part of an id)."""
_MMMU_DISCIPLINE_OF = {s: d for d, subjects in MMMU_DISCIPLINES.items() for s in subjects}
_MMMU_ID = re.compile(r"(?:dev|validation|test)_(?P<subject>.+)_\d+")
_MMMU_MAX_IMAGES = 7
_MMMU_PLACEHOLDER = re.compile(r"<image (\d+)>")

_INTEGER = re.compile(r"[-+]?\d+")
_DECIMAL = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+")
_OPTIONS_HEADER = re.compile(r"(?:Options|Choices)\s*:", re.IGNORECASE)
_INLINE_LETTERS = "ABCD"
_NOT_DATA_FILES = frozenset({"dataset_info.json", "dataset_infos.json", "state.json", "dataset_dict.json"})
_DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


class DatasetUnavailable(RuntimeError):
    """A benchmark could not be loaded from the Hub; the message says how to pass a local export."""


class UnparsableRow(ValueError):
    """A row whose question cannot be read (MMStar options not found): skipped with a warning and
    counted, unless no row of the benchmark can be read."""


# --- small row helpers -----------------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _plain(value: Any) -> Any:
    """``value`` as JSON-able plain data (numpy scalars and arrays become Python values)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _as_list(value: Any, where: str) -> list[Any]:
    """A list from a list, a tuple, a numpy array, a string repr of a list, or nothing (``[]``)."""
    if _missing(value):
        return []
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            raise ValueError(f"{where}: expected a list, got the string {value[:80]!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}: {value[:80]!r} is not a list literal") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return list(value)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """A dict from a dict, a JSON object string, or nothing (``{}``)."""
    if _missing(value):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{where}: {value[:80]!r} is not a JSON object") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _number_type(answer: str) -> str:
    """``integer`` / ``float`` for a plain number, else ``text``."""
    text = answer.strip().replace(",", "")
    if _INTEGER.fullmatch(text):
        return "integer"
    if _DECIMAL.fullmatch(text):
        return "float"
    return "text"


def _gold_letter(answer: str, options: Sequence[str], where: str, *, text_first: bool) -> str:
    """The letter of the gold option: by a letter, or by its text (exact, else equivalent).

    ``text_first`` checks the option texts before reading ``answer`` as a letter (MathVista gives
    the option text; an option text could itself be a single capital letter).
    """
    stripped = answer.strip()
    by_text = next((i for i, o in enumerate(options) if str(o).strip() == stripped), None)
    by_letter = (
        _LETTERS.index(stripped) if len(stripped) == 1 and stripped in _LETTERS[: len(options)] else None
    )
    first, second = (by_text, by_letter) if text_first else (by_letter, by_text)
    index = first if first is not None else second
    if index is None:
        index = next((i for i, o in enumerate(options) if is_equivalent(stripped, str(o))), None)
    if index is None:
        raise ValueError(f"{where}: gold answer {answer!r} is neither an option letter nor an option")
    return _LETTERS[index]


def split_inline_options(text: str) -> tuple[str, list[str]]:
    """Split a question whose options are written inside it (MMStar) into stem and option texts.

    The last ``Options:`` (or ``Choices:``) header starts the options, at most four (A-D, as MMStar
    has). ``A`` opens the body with a marker ``A:``, ``A.``, ``A)`` or ``(A)``; B, C and D must use
    the same marker, each after a separator: a comma or semicolon (then spaces) or a line break.
    So ``"Options: A: bacteria, B: fungi, C: yeast, D: E. coli"`` keeps ``E. coli`` whole, and a
    ``C.`` inside an option's words is no marker. ``"Which?\\nOptions: A: 1, B: 2"`` ->
    ``("Which?", ["1", "2"])``. Without a header or with fewer than two options, the text is
    returned whole with ``[]``.
    """
    headers = list(_OPTIONS_HEADER.finditer(text))
    if not headers:
        return text, []
    header = headers[-1]
    body = text[header.end() :]
    first = re.match(r"\s*(\(A\)|A[:.)])[ \t]*", body)
    if first is None:
        return text, []
    style = re.escape(first.group(1)).replace("A", "{letter}")
    spans: list[tuple[int, int]] = [first.span()]
    for letter in _INLINE_LETTERS[1:]:
        marker = re.compile(rf"(?:[,;][ \t]*|\n\s*)({style.format(letter=letter)})[ \t]*")
        found = marker.search(body, spans[-1][1])
        if found is None:
            break
        spans.append((found.start(), found.end()))
    if len(spans) < 2:
        return text, []
    options = []
    for k, (_, end) in enumerate(spans):
        stop = spans[k + 1][0] if k + 1 < len(spans) else len(body)
        options.append(body[end:stop].strip().rstrip(",;").strip())
    return text[: header.start()].rstrip(), options


# --- images ------------------------------------------------------------------------------------


def _default_image_cache() -> Path:
    root = os.environ.get("CATTS_CACHE_DIR") or Path.home() / ".cache" / "catts_graph"
    return Path(root) / "images"


class _ImageResolver:
    """Turns the image values found in rows into file references (or URLs / data URIs as given)."""

    def __init__(self, roots: Sequence[Path], cache: Path) -> None:
        self.roots = [r for i, r in enumerate(roots) if r not in roots[:i]]
        self.cache = cache

    def reference(self, value: Any, where: str) -> str:
        if isinstance(value, Image.Image):
            buffer = io.BytesIO()
            _png_ready(value).save(buffer, format="PNG")
            return self._cached(buffer.getvalue(), where)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self._cached(bytes(value), where)
        if isinstance(value, Mapping):
            data, path = value.get("bytes"), value.get("path")
            if data:
                return self._cached(bytes(data), where)
            if path:
                return self._path(str(path), where)
            raise ValueError(f"{where}: image dict has neither bytes nor a path")
        if isinstance(value, (str, Path)):
            return self._path(str(value), where)
        raise ValueError(f"{where}: cannot read an image from a {type(value).__name__}")

    def _path(self, reference: str, where: str) -> str:
        if reference.startswith(("data:", "http://", "https://")):
            return reference
        path = Path(reference).expanduser()
        candidates = [path] if path.is_absolute() else [root / path for root in self.roots]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate.resolve())
        searched = ", ".join(str(c.parent) for c in candidates) or "(no folder)"
        raise ValueError(
            f"{where}: image file {reference!r} not found (looked in {searched}); pass image_dir= "
            "the folder the image paths are relative to"
        )

    def _cached(self, data: bytes, where: str) -> str:
        try:
            with Image.open(io.BytesIO(data)) as probe:
                extension = (probe.format or "png").lower()
        except (UnidentifiedImageError, OSError):
            raise ValueError(f"{where}: the embedded bytes are not an image PIL can read") from None
        digest = hashlib.sha256(data).hexdigest()
        target = self.cache / f"{digest}.{extension}"
        if not target.is_file():
            self.cache.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            partial.write_bytes(data)
            os.replace(partial, target)  # atomic: concurrent loaders never see half a file
        return str(target.resolve())


def _png_ready(image: Image.Image) -> Image.Image:
    """``image`` in a mode PNG stores and every backend reads: RGB, RGBA or L kept; a mode with
    transparency (a palette with a transparent colour, LA, PA) to RGBA; any other (CMYK, palette,
    16-bit, 1-bit) to RGB. PNG cannot hold CMYK: saving a CMYK JPEG as it is raises OSError."""
    if image.mode in ("RGB", "RGBA", "L"):
        return image
    transparent = image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if transparent else "RGB")


def _first_image(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((row[k] for k in keys if k in row and not _missing(row[k])), None)


# --- one parser per benchmark ------------------------------------------------------------------


@dataclass
class _Row:
    data: Mapping[str, Any]
    position: int
    benchmark: str
    images: _ImageResolver

    @property
    def where(self) -> str:
        return f"{self.benchmark} row {self.position}"

    def get(self, *keys: str) -> Any:
        return next((self.data[k] for k in keys if k in self.data and not _missing(self.data[k])), None)

    def require(self, *keys: str) -> Any:
        value = self.get(*keys)
        if value is None:
            raise ValueError(
                f"{self.where}: no value in column {' / '.join(repr(k) for k in keys)}; the row has "
                f"columns {sorted(self.data)} (expected layouts: catts_graph.eval.datasets)"
            )
        return value

    def ident(self, *keys: str) -> str:
        value = self.get(*keys)
        if value is None:  # rows without an id column are numbered by position, which is stable
            return str(self.position)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value).strip()

    def image(self, *keys: str, item_id: str) -> str:
        value = _first_image(self.data, keys)
        if value is None:
            raise ValueError(f"{self.benchmark} item {item_id!r}: no image in {' / '.join(keys)}")
        return self.images.reference(value, f"{self.benchmark} item {item_id!r}")


_MATHVISTA_HINTS = {
    "integer": "an integer answer and provide the final value, e.g., 1, 2, 3, at the end.",
    ("float", 1): "a floating-point number with one decimal place and provide the final value, e.g., "
    "1.2, 1.3, 1.4, at the end.",
    ("float", 2): "a floating-point number with two decimal places and provide the final value, e.g., "
    "1.23, 1.34, 1.45, at the end.",
    "list": "a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], "
    "at the end.",
}


def mathvista_query(question: str, answer_type: str, precision: int | None, unit: Any = None) -> str:
    """MathVista's ``query`` of a free-form item, as the Hub rows carry it and its GitHub JSON does
    not: ``"Hint: Please answer the question requiring <form>\\nQuestion: <question> (Unit: <unit>)"``,
    the form by answer type (integer; float at one or two decimals; list) as in MathVista's
    ``build_query.py``; a float at other precisions asks for that many decimal places."""
    key: Any = (answer_type, precision) if answer_type == "float" else answer_type
    form = _MATHVISTA_HINTS.get(key)
    if form is None:
        places = f"{precision} decimal places" if precision is not None else "decimals"
        form = f"a floating-point number with {places} and provide the final value at the end."
    text = f"Hint: Please answer the question requiring {form}\nQuestion: {question}"
    return text + (f" (Unit: {unit})" if not _missing(unit) else "")


def _mathvista(row: _Row) -> Item:
    item_id = row.ident("pid", "id")
    where = f"mathvista item {item_id!r}"
    answer = str(row.require("answer")).strip()
    choices = [str(c) for c in _as_list(row.get("choices"), f"{where}: choices")]
    question_type = str(row.get("question_type") or ("multi_choice" if choices else "free_form"))
    meta = _mapping(row.get("metadata"), f"{where}: metadata")
    source_type = str(row.get("answer_type") or "text")
    precision = None
    if question_type == "multi_choice":
        options: list[str] | None = choices
        answer = _gold_letter(answer, choices, where, text_first=True)
        answer_type = "choice"
        question = str(row.require("question"))
    else:
        options = None
        answer_type = {"integer": "integer", "float": "float"}.get(source_type, "text")
        raw_precision = row.get("precision")
        if answer_type == "float" and raw_precision is not None:
            precision = int(float(raw_precision))
        question = str(
            row.get("query")
            or mathvista_query(row.require("question"), source_type, precision, row.get("unit"))
        )
    metadata = {
        **{k: _plain(v) for k, v in meta.items()},
        "question_type": question_type,
        "source_answer_type": source_type,
        "unit": _plain(row.get("unit")),
        "skills": [str(s) for s in _as_list(meta.get("skills"), f"{where}: skills")],
    }
    return Item(
        id=item_id,
        benchmark="mathvista",
        images=[row.image("decoded_image", "image", item_id=item_id)],
        question=question,
        options=options,
        answer=answer,
        answer_type=answer_type,
        category=_plain(meta.get("task")) or None,
        precision=precision,
        metadata=metadata,
    )


def _mathvision(row: _Row) -> Item:
    item_id = row.ident("id", "pid", "index")
    where = f"mathvision item {item_id!r}"
    answer = str(row.require("answer")).strip()
    options = [str(o) for o in _as_list(row.get("options"), f"{where}: options")]
    if options:
        answer = _gold_letter(answer, options, where, text_first=False)
    subject = row.get("subject")
    return Item(
        id=item_id,
        benchmark="mathvision",
        images=[row.image("decoded_image", "image", item_id=item_id)],
        question=str(row.require("question")),
        options=options or None,
        answer=answer,
        answer_type="choice" if options else _number_type(answer),
        category=str(subject) if subject is not None else None,
        metadata={"level": _plain(row.get("level")), "subject": _plain(subject)},
    )


def _mmstar(row: _Row) -> Item:
    item_id = row.ident("index", "id")
    where = f"mmstar item {item_id!r}"
    text = str(row.require("question"))
    stem, options = split_inline_options(text)
    if not options:  # VLMEvalKit-style exports keep the options in columns A, B, C, ...
        options = []
        for letter in _LETTERS:
            if row.get(letter) is None:
                break
            options.append(str(row.get(letter)))
    if len(options) < 2:
        raise UnparsableRow(f"{where}: found no 'Options: A: ..., B: ...' in the question {text[:120]!r}")
    meta_info = _mapping(row.get("meta_info"), f"{where}: meta_info")
    return Item(
        id=item_id,
        benchmark="mmstar",
        images=[row.image("image", "decoded_image", item_id=item_id)],
        question=stem,
        options=options,
        answer=_gold_letter(str(row.require("answer")), options, where, text_first=False),
        answer_type="choice",
        category=_plain(row.get("category")),
        metadata={
            "l2_category": _plain(row.get("l2_category", "l2-category")),
            **{k: _plain(v) for k, v in meta_info.items()},
        },
    )


def _mmmu(row: _Row) -> Item:
    item_id = row.ident("id")
    where = f"mmmu item {item_id!r}"
    match = _MMMU_ID.fullmatch(item_id)
    subject = match.group("subject") if match else row.get("subject")
    options = [str(o) for o in _as_list(row.get("options"), f"{where}: options")]
    question_type = str(row.get("question_type") or ("multiple-choice" if options else "open"))
    raw_answer = str(row.require("answer")).strip()
    golds = (
        [str(a).strip() for a in _as_list(raw_answer, f"{where}: answer")]
        if raw_answer.startswith("[")
        else [raw_answer]
    )
    if not golds or not golds[0]:
        raise ValueError(f"{where}: the gold answer {raw_answer!r} is empty")
    if question_type == "multiple-choice" and options:
        golds = [_gold_letter(g, options, where, text_first=False) for g in golds]
        answer_type = "choice"
    else:
        options = []
        answer_type = _number_type(golds[0])
    question = str(row.require("question"))
    present = [k for k in range(1, _MMMU_MAX_IMAGES + 1) if not _missing(row.data.get(f"image_{k}"))]
    if not present:
        raise ValueError(f"{where}: no image in image_1 .. image_{_MMMU_MAX_IMAGES}")
    # As lmms-eval: the images the question and options refer to, by number; all when none is named.
    referenced = sorted({int(k) for k in _MMMU_PLACEHOLDER.findall(" ".join([question, *options]))})
    numbers = referenced or present
    absent = [k for k in numbers if k not in present]
    if absent:
        raise ValueError(f"{where}: the text refers to <image {absent[0]}> but image_{absent[0]} is empty")
    images = [row.image(f"image_{k}", item_id=item_id) for k in numbers]
    metadata: dict[str, Any] = {
        "question_type": question_type,
        "subject": _plain(subject),
        "discipline": _MMMU_DISCIPLINE_OF.get(str(subject)),
        "subfield": _plain(row.get("subfield")),
        "topic_difficulty": _plain(row.get("topic_difficulty")),
        "image_numbers": numbers,
        "image_placement": "referenced images first" if referenced else "all images first",
    }
    if len(golds) > 1:
        metadata["accepted_answers"] = golds
    return Item(
        id=item_id,
        benchmark="mmmu",
        images=images,
        question=question,
        options=options or None,
        answer=golds[0],
        answer_type=answer_type,
        category=_plain(subject),
        metadata=metadata,
    )


@dataclass(frozen=True)
class _Benchmark:
    hub: str
    configs: tuple[str | None, ...]
    default_split: str
    splits: tuple[str, ...]
    parse: Callable[[_Row], Item]
    id_keys: tuple[str, ...]


_SPECS: dict[str, _Benchmark] = {
    "mathvista": _Benchmark(
        "AI4Math/MathVista", (None,), "testmini", ("testmini",), _mathvista, ("pid", "id")
    ),
    "mathvision": _Benchmark(
        "MathLLMs/MathVision", (None,), "testmini", ("testmini", "test"), _mathvision, ("id", "pid", "index")
    ),
    "mmstar": _Benchmark("Lin-Chen/MMStar", ("val",), "val", ("val",), _mmstar, ("index", "id")),
    "mmmu": _Benchmark(
        "MMMU/MMMU", tuple(sorted(_MMMU_DISCIPLINE_OF)), "validation", ("validation", "dev"), _mmmu, ("id",)
    ),
}


# --- known-bad gold items ------------------------------------------------------------------------


def _unique_choices(row: dict[str, Any]) -> dict[str, Any] | None:
    choices = _as_list(row.get("choices"), "choices")
    unique = list(dict.fromkeys(str(c) for c in choices))
    return {**row, "choices": unique} if len(unique) < len(choices) else None


def _mathvision_2830(row: dict[str, Any]) -> dict[str, Any] | None:
    return {**row, "answer": "\\frac{36}{13}"} if row.get("answer") == "\x0crac{36}{13}" else None


def _picture_options(row: dict[str, Any]) -> dict[str, Any] | None:
    free_form = not _as_list(row.get("options"), "options")
    return (
        {**row, "options": list("ABCDE")} if free_form and str(row.get("answer")).strip() in "ABCDE" else None
    )


@dataclass(frozen=True)
class KnownBadItem:
    """A benchmark item whose gold (or options) is wrong in the published data, and the repair the
    loader applies. ``repair`` returns the repaired row, or None when the row no longer has the
    defect (a corrected release is left as it is)."""

    benchmark: str
    item_id: str
    problem: str
    fix: str
    repair: Callable[[dict[str, Any]], dict[str, Any] | None]


KNOWN_BAD_ITEMS: tuple[KnownBadItem, ...] = (
    KnownBadItem(
        "mathvision",
        "2830",
        "gold '\\x0crac{36}{13}': a '\\f' escape ate the backslash of \\frac; no answer can match it",
        "gold read as '\\frac{36}{13}'",
        _mathvision_2830,
    ),
    *(
        KnownBadItem(
            "mathvision",
            item_id,
            "free-form, gold 'C': the options exist only in the picture",
            "options A-E (the letters, as MathVision writes picture-only options), gold C",
            _picture_options,
        )
        for item_id in ("59", "434")
    ),
    *(
        KnownBadItem(
            "mathvista",
            item_id,
            "one choice text listed under two letters (the official scorer accepts either)",
            "the repeated choice dropped (the gold's letter is unchanged)",
            _unique_choices,
        )
        for item_id in ("740", "781")
    ),
)
"""Every known-bad item the loader repairs; each repaired item says so in ``metadata["gold_fix"]``,
and a load that repaired any logs them. The official scorers on a repaired item can differ from
the official code on the original (MathVision 2830 can be right here, never there)."""
_KNOWN_BAD = {(bad.benchmark, bad.item_id): bad for bad in KNOWN_BAD_ITEMS}


# --- reading rows ------------------------------------------------------------------------------


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e9 else f"{num_bytes / 1e6:.1f} MB"


def _hub_rows(name: str, spec: _Benchmark, split: str, limit: int | None) -> tuple[list[Any], int | None]:
    """One row stream per config, streaming only ``split`` (nothing of the other splits is read),
    and the number of rows they hold (None when the Hub card does not say). Prints the split's
    size before any row is read."""
    how = (
        f"Download it where the Hub is reachable (e.g. `hf download {spec.hub} --repo-type dataset "
        f"--local-dir DIR`, or `datasets.load_dataset(...).to_parquet(FILE)`) and pass "
        f"source=DIR or FILE (JSON, JSONL or parquet)"
    )
    try:
        import datasets
    except ImportError:
        raise DatasetUnavailable(
            f"loading {name} from the Hub needs the `datasets` package (pip install "
            f"'catts-graph[eval]'). {how}."
        ) from None
    offline = hub_unreachable()
    if offline is not None:
        raise DatasetUnavailable(
            f"cannot load {name}: the Hugging Face Hub is unreachable ({offline}). {how}; or set "
            f"HF_HUB_OFFLINE=1 to read a cached copy; the synthetic benchmark needs no Hub."
        )
    streams, rows, num_bytes = [], 0, 0
    for config in spec.configs:
        label = spec.hub + (f" ({config})" if config else "")
        try:
            info = datasets.load_dataset_builder(spec.hub, config).info
            streams.append(datasets.load_dataset(spec.hub, config, split=split, streaming=True))
        except Exception as err:
            raise DatasetUnavailable(
                f"could not load {name} from the Hugging Face Hub ({label}, split {split!r}): "
                f"{type(err).__name__}: {err}. No Hub reachable from here? {how}."
            ) from err
        described = (info.splits or {}).get(split)
        if described is None or rows is None:
            rows = None
        else:
            rows += described.num_examples
            num_bytes += described.num_bytes
    size = f"{rows} rows, {_size(num_bytes)}" if rows is not None else "size not given by the Hub card"
    reading = f", reading the first {limit}" if limit is not None and name != "mmmu" else ""
    _console().print(f"{spec.hub} split {split!r}: {size}, streamed (no other split is downloaded){reading}")
    return streams, rows


def _console() -> Console:
    return Console(stderr=True)


def _round_robin(groups: Sequence[Sequence[Any]], limit: int) -> list[Any]:
    """The first row of each group, then the second of each, ...; ``limit`` rows at most."""
    picked: list[Any] = []
    for depth in range(max((len(g) for g in groups), default=0)):
        picked += [group[depth] for group in groups if depth < len(group)]
    return picked[:limit]


def _mmmu_subject(row: Mapping[str, Any]) -> str:
    match = _MMMU_ID.fullmatch(str(row.get("id", "")))
    return match.group("subject") if match else str(row.get("subject"))


def _split_of(path: Path) -> set[str]:
    """Split names a data file's name or folder suggests (``testmini-00000-of-00001.parquet``)."""
    return {path.stem, path.stem.split("-")[0], path.parent.name}


def _read_file(path: Path) -> list[dict[str, Any]]:
    where = f"source file {str(path)!r}"
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as err:
                    raise ValueError(f"{where}: line {number} is not JSON ({err})") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{where}: not JSON ({err})") from None
        if isinstance(data, Mapping) and isinstance(data.get("data"), list):
            rows = data["data"]
        elif isinstance(data, Mapping) and data and all(isinstance(v, Mapping) for v in data.values()):
            # {id: row}, as MathVista's own testmini.json: the key is the id when the row has none.
            rows = [{"id": key, **value} for key, value in data.items()]
        elif isinstance(data, list):
            rows = data
        else:
            raise ValueError(f"{where}: expected a list of rows, {{'data': [...]}} or {{id: row}}")
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise ValueError(f"{where}: row {bad} is a {type(rows[bad]).__name__}, expected an object")
    return rows


def _local_rows(source: Path, split: str) -> tuple[list[tuple[dict[str, Any], Path]], Path]:
    """Rows of a local export, each with the folder of its file; and the source's own folder."""
    if not source.exists():
        raise ValueError(f"source: no file or folder at {str(source)!r}")
    if source.is_dir() and ((source / "state.json").is_file() or (source / "dataset_dict.json").is_file()):
        import datasets

        loaded = datasets.load_from_disk(str(source))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"source: {str(source)!r} has splits {sorted(loaded)}, not {split!r}")
            loaded = loaded[split]
        return [(row, source) for row in loaded], source
    if source.is_file():
        if source.suffix not in _DATA_SUFFIXES:
            raise ValueError(f"source: {str(source)!r} is not a .json, .jsonl or .parquet file")
        files = [source]
    else:
        files = sorted(
            p
            for p in source.rglob("*")
            if p.suffix in _DATA_SUFFIXES and p.name not in _NOT_DATA_FILES and p.is_file()
        )
        if not files:
            raise ValueError(f"source: no .json, .jsonl or .parquet file under {str(source)!r}")
        of_split = [p for p in files if split in _split_of(p)]
        files = of_split or files
    rows = [(row, path.parent) for path in files for row in _read_file(path)]
    return rows, source if source.is_dir() else source.parent


def load_benchmark(
    name: str,
    *,
    source: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    image_dir: str | None = None,
    image_cache: str | None = None,
) -> list[Item]:
    """The items of benchmark ``name`` (one of :data:`BENCHMARKS`), in the source's order.

    ``"synthetic"`` is generated (:func:`catts_graph.eval.synthetic.load_synthetic`): splits
    ``train``, ``validation``, ``test`` (default), no ``source``.

    ``source`` None loads the Hub dataset (see the module docstring for names and splits) and
    raises :class:`DatasetUnavailable` with instructions when it cannot; otherwise ``source`` is a
    local file or folder. ``split`` defaults to ``testmini`` (MathVista, MathVision; ``test`` is
    MathVision's full set), ``val`` (MMStar) or ``validation`` (MMMU). ``limit`` keeps the first
    items (MMMU: the first of each subject in turn). ``image_dir`` is where relative image paths
    live when not beside the data file; ``image_cache`` where embedded images are written. Item
    ids are the dataset's own (``pid``, ``id``, ``index``); a duplicate id is an error.
    """
    if name == "synthetic":
        if source is not None:
            raise ValueError("source: the synthetic benchmark is generated, it reads no files")
        from catts_graph.eval.synthetic import load_synthetic

        return load_synthetic(split or "test", limit=limit)
    if name not in _SPECS:
        raise ValueError(f"benchmark {name!r} is not one of {BENCHMARKS}")
    spec = _SPECS[name]
    split = split or spec.default_split
    if split not in spec.splits:
        raise ValueError(
            f"split {split!r} is not available for {name} with gold answers; choose from {spec.splits}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    cache = Path(image_cache).expanduser() if image_cache else _default_image_cache()
    extra = [Path(image_dir).expanduser()] if image_dir else []
    if image_dir and not extra[0].is_dir():
        raise ValueError(f"image_dir: no folder at {image_dir!r}")

    if source is None:
        streams, expected = _hub_rows(name, spec, split, limit)
        if name == "mmmu" and limit is not None:
            # Subjects come alphabetically: the first N rows would be Accounting's, so take turns.
            streams = [_round_robin([list(itertools.islice(s, limit)) for s in streams], limit)]
        rows: Iterable[tuple[Mapping[str, Any], Path | None]] = (
            (row, None) for row in itertools.islice(itertools.chain.from_iterable(streams), limit)
        )
        known = [x for x in (expected, limit) if x is not None]
        total = min(known) if known else None
        root: Path | None = None
    else:
        local, root = _local_rows(Path(source).expanduser(), split)
        if name == "mmmu" and limit is not None:
            subjects: dict[str, list[tuple[dict[str, Any], Path]]] = {}
            for pair in local:
                subjects.setdefault(_mmmu_subject(pair[0]), []).append(pair)
            local = _round_robin(list(subjects.values()), limit)
        rows = local[:limit] if limit else local
        total = None

    items: list[Item] = []
    seen: dict[str, int] = {}
    skipped: list[str] = []
    fixed: list[str] = []
    with Progress(
        TextColumn(f"{name} {split}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=_console(),
        transient=True,
        disable=source is not None,
    ) as progress:
        task = progress.add_task("rows", total=total)
        for position, (data, folder) in enumerate(rows):
            progress.advance(task)
            roots = [*extra, *(p for p in (folder, root) if p is not None)]
            row = _Row(data, position, name, _ImageResolver(roots, cache))
            bad = _KNOWN_BAD.get((name, row.ident(*spec.id_keys)))
            repaired = bad.repair(dict(data)) if bad is not None else None
            if bad is not None and repaired is not None:
                row = dataclasses.replace(row, data=repaired)
                fixed.append(f"{bad.item_id} ({bad.fix})")
            try:
                item = spec.parse(row)
            except UnparsableRow as err:
                skipped.append(str(err))
                continue
            if bad is not None and repaired is not None:
                item = dataclasses.replace(item, metadata={**item.metadata, "gold_fix": bad.fix})
            if item.id in seen:
                raise ValueError(
                    f"{name}: item id {item.id!r} appears at rows {seen[item.id]} and {position}; ids "
                    "must be unique"
                )
            seen[item.id] = position
            items.append(item)
    if skipped and not items:
        raise ValueError(f"{name}: none of the {len(skipped)} rows could be read; the first: {skipped[0]}")
    if skipped:
        _LOG.warning(
            "%s: skipped %d of %d rows that could not be read; the first: %s",
            name,
            len(skipped),
            len(skipped) + len(items),
            skipped[0],
        )
    if fixed:
        _LOG.warning("%s: repaired %d known-bad items: %s", name, len(fixed), "; ".join(fixed))
    return items
