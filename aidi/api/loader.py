"""Load a job file in either form — AIDI's train_job.yaml or a TrainJob CR — into one typed object."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import SecretStr, ValidationError

from aidi.api import aidi_form
from aidi.api import trainjob as tj
from aidi.api.errors import FieldError, SpecError, excerpt, from_pydantic

Form = Literal["aidi", "cr"]


@dataclass
class JobFile:
    """A validated job: the CR to submit, plus what only the workstation knows."""

    job: tj.TrainJob
    form: Form
    source: str
    upload_dir: Path | None = None
    # SecretStr keeps the password out of reprs, logs and tracebacks.
    password: SecretStr | None = field(default=None, repr=False)


# A job file is a page of YAML; 1 MiB is hundreds of times the example, and keeps parsing under a second.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32  # the deepest real job file is 5 levels (spec.dataSpace.inputs[0].name)
MAX_ALIASES = 64  # anchors are for repeating a block or two, not for building structures
MAX_NODES = 100_000  # values after alias expansion: a 9-level "billion laughs" file has 387 million


class _JobFileError(Exception):
    """A structural problem found while reading the YAML, with its line and column (1-based)."""

    def __init__(self, line: int, column: int, message: str) -> None:
        super().__init__(message)
        self.line, self.column, self.message = line, column, message


class _GuardedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with limits: depth (before Python's own recursion limit hits), alias count and
    expanded size (no "billion laughs"), and duplicate keys refused instead of the last one silently winning."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _JobFileError(mark.line + 1, mark.column + 1,
                                    f"more than {MAX_ALIASES} YAML aliases (*name); write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _JobFileError(mark.line + 1, mark.column + 1,
                                    f"values nested more than {MAX_DEPTH} levels deep; a job file is a few levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeConstructor reports it
                break
            if first is not None:
                mark = key_node.start_mark
                raise _JobFileError(mark.line + 1, mark.column + 1,
                                    f"duplicate key {excerpt(key)} (first at line {first.start_mark.line + 1}); "
                                    "keep only one of them")
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (shared nodes counted each time)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_NODES + 1)
    return memo[id(node)]


def read_yaml(text: str, source: str, example: str = "examples/train_job.yaml") -> Any:
    """The one YAML document in ``text``, read with the limits above; SpecError (with FILE:LINE:COLUMN) if not."""
    docs = []
    loader: _GuardedLoader | None = None
    try:
        loader = _GuardedLoader(text)
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if _expanded_size(node, {}) > MAX_NODES:
                mark = node.start_mark
                raise _JobFileError(mark.line + 1, mark.column + 1,
                                    f"the YAML expands to more than {MAX_NODES} values through its aliases (an "
                                    "alias bomb?); write the values out")
            data = loader.construct_document(node)
            if data is not None:
                docs.append(data)
    except _JobFileError as exc:
        raise SpecError(f"{source}:{exc.line}:{exc.column}", [FieldError("", exc.message)]) from None
    except ValueError as exc:  # e.g. an integer of thousands of digits (Python refuses to convert it)
        raise SpecError(source, [FieldError("", f"a value cannot be read: {excerpt(str(exc), 120)[1:-1]}; "
                                                "write numbers of a sensible size")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(where, [FieldError("", f"YAML syntax error: {excerpt(problem, 200)[1:-1]}; fix the "
                                               "indentation or quoting on that line")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if not docs:
        raise SpecError(source, [FieldError("", f"the file is empty; see {example}")])
    if len(docs) > 1:
        raise SpecError(source, [FieldError("", f"the file holds {len(docs)} YAML documents; put one per file")])
    return docs[0]


def load_text(text: str, source: str = "<string>", base_dir: Path | None = None) -> JobFile:
    """Parse and validate a job file's text. Raises SpecError listing every problem."""
    if len(text) > MAX_FILE_BYTES:
        raise SpecError(source, [FieldError("", f"the text is over the {MAX_FILE_BYTES >> 20} MiB limit for a "
                                                "job file")])
    doc = read_yaml(text, source)
    if not isinstance(doc, dict):
        raise SpecError(source, [FieldError("", "expected a mapping at the top level; see examples/train_job.yaml")])
    base = base_dir or Path(".")
    if aidi_form.is_aidi_form(doc):
        parsed, errors = aidi_form.parse(doc)
        if errors or parsed is None:
            raise SpecError(source, errors)
        try:
            job = aidi_form.to_trainjob(parsed)
        except ValidationError as exc:
            raise SpecError(source, from_pydantic(exc, tj.TrainJob)) from None
        upload = Path(parsed.REQUIRED.UPLOAD_DIR)
        return JobFile(job=job, form="aidi", source=source,
                       upload_dir=upload if upload.is_absolute() else base / upload,
                       password=parsed.REQUIRED.JOB_PASSWD)
    if "apiVersion" in doc or "kind" in doc:
        errors = []
        if doc.get("apiVersion") != tj.API_VERSION:
            errors.append(FieldError("apiVersion", f"expected {tj.API_VERSION!r}, got {doc.get('apiVersion')!r}"))
        if doc.get("kind") != tj.KIND:
            errors.append(FieldError("kind", f"expected {tj.KIND!r}, got {doc.get('kind')!r}"))
        body = {k: v for k, v in doc.items() if k != "status"}
        try:
            job = tj.TrainJob.model_validate(body)
        except ValidationError as exc:
            errors.extend(e for e in from_pydantic(exc, tj.TrainJob) if e.path not in {"apiVersion", "kind"})
            raise SpecError(source, errors) from None
        if errors:
            raise SpecError(source, errors)
        return JobFile(job=job, form="cr", source=source)
    raise SpecError(source, [FieldError(
        "", "not a job file: expected REQUIRED/OPTIONAL sections (train_job.yaml) or "
            f"apiVersion: {tj.API_VERSION} with kind: {tj.KIND}",
    )])


def read_job_text(path: str | Path) -> str:
    """The text of a job file: at most MAX_FILE_BYTES, UTF-8; SpecError otherwise."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(str(path), [FieldError("", "no such file; pass the job file with -f PATH")]) from None
    except IsADirectoryError:
        raise SpecError(str(path), [FieldError("", "a folder, not a job file; pass the job file with -f PATH")]) \
            from None
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(str(path), [FieldError(
            "", f"the file is over the {MAX_FILE_BYTES >> 20} MiB limit for a job file; a job file describes the "
                "job, the code goes in UPLOAD_DIR and the data in the dataspace")])
    return decode_job_text(raw, str(path))


def decode_job_text(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"{source}:{line}", [FieldError(
            "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the file as UTF-8")]) \
            from None


def load_file(path: str | Path) -> JobFile:
    """Load a job file from disk; relative UPLOAD_DIRs are resolved against the file's folder."""
    path = Path(path)
    return load_text(read_job_text(path), source=str(path), base_dir=path.parent)
