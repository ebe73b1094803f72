"""Micro-benchmarks (pytest-benchmark) of the receiver's hot path, each step one call into the
extension (``oxidip._core``): decoding received PDUs, extracting attributes from a data set,
and building an instance's path. Each also checks its result (against pydicom, or against the
tests' independent Python implementation of the path template), so a run that is only meant
to keep them working (CI: ``--benchmark-disable``, each run once) still tests something.

    .venv/bin/python -m pytest bench/micro --benchmark-only     # timed (BENCHMARKS=1 in run.sh)
    .venv/bin/python -m pytest bench/micro --benchmark-disable  # each once, untimed (CI)

Not collected by the normal test run (``testpaths = ["tests"]``).
"""

from pathlib import Path

import msgspec
import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pytest_benchmark.fixture import BenchmarkFixture
from tests.helpers.dicom import (
    attributes_as_dict,
    default_path,
    expected_attributes,
    source_dataset_bytes,
)
from tests.helpers.pdu import EXPLICIT_LE, Context, associate_rq, c_store_rq, p_data, pdv

from oxidip import _core
from oxidip._boundary import Attributes

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Our announced maximum PDU length (the default).
MAX_PDU = 131072


def _c_store_stream(instances: int, dataset_len: int, fragment: int) -> tuple[bytes, int]:
    """What a sender sends for ``instances`` C-STOREs (command, then the data set in PDVs of
    ``fragment`` bytes) and how many PDUs that is."""
    parts, pdus = [], 0
    dataset = bytes(range(256)) * (dataset_len // 256)
    for n in range(instances):
        parts.append(
            p_data(pdv(1, c_store_rq(n + 1, CT_IMAGE, f"1.2.3.{n}"), command=True, last=True))
        )
        chunks = [dataset[i : i + fragment] for i in range(0, len(dataset), fragment)]
        for i, chunk in enumerate(chunks):
            parts.append(p_data(pdv(1, chunk, command=False, last=i == len(chunks) - 1)))
        pdus += 1 + len(chunks)
    return b"".join(parts), pdus


@pytest.mark.parametrize(
    ("instances", "dataset_len", "fragment"),
    [(1000, 2048, 16372), (10, 524288, 131060)],
    ids=["1000 small C-STOREs", "10 CT C-STOREs in 128 KiB PDUs"],
)
def test_decode_p_data_stream(
    benchmark: BenchmarkFixture, instances: int, dataset_len: int, fragment: int
) -> None:
    stream, pdus = _c_store_stream(instances, dataset_len, fragment)
    assert benchmark(_core.decode_pdus, stream, MAX_PDU) == pdus


def test_decode_associate_rq(benchmark: BenchmarkFixture) -> None:
    # As storescu proposes: 120 storage SOP classes with three transfer syntaxes each, so
    # the parse of items and sub-items dominates.
    contexts = [
        Context(
            2 * i + 1,
            f"1.2.840.10008.5.1.4.1.1.{i}",
            [EXPLICIT_LE, "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"],
        )
        for i in range(120)
    ]
    rq = associate_rq(contexts=contexts) * 10
    assert benchmark(_core.decode_pdus, rq, MAX_PDU) == 10


#: Test files of pydicom's: CT and MR images, a deep RT plan (nested sequences), and UTF-8
#: text (ISO_IR 192).
CORPUS = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "chrX1.dcm"]


def _source(name: str) -> tuple[bytes, str, pydicom.Dataset]:
    found = get_testdata_file(name) or next(iter(get_charset_files(name)), None)
    assert found, f"{name} not in pydicom's test files"
    path = Path(found)
    ds = pydicom.dcmread(path)
    return source_dataset_bytes(path), str(ds.file_meta.TransferSyntaxUID), ds


def _attributes(extracted: _core.ExtractedAttributes) -> dict[str, str | None]:
    return attributes_as_dict(msgspec.msgpack.decode(extracted.to_msgpack(), type=Attributes))


@pytest.mark.parametrize("name", CORPUS)
def test_extract_attributes(benchmark: BenchmarkFixture, name: str) -> None:
    dataset, transfer_syntax, ds = _source(name)
    extracted = benchmark(_core.extract_attributes, dataset, transfer_syntax)
    assert _attributes(extracted) == expected_attributes(ds)


@pytest.mark.parametrize("name", CORPUS)
def test_render_default_path(benchmark: BenchmarkFixture, name: str) -> None:
    dataset, transfer_syntax, _ = _source(name)
    extracted = _core.extract_attributes(dataset, transfer_syntax)
    template = _core.PathTemplate(_core.DEFAULT_PATH_TEMPLATE)
    path = benchmark(template.render, extracted, "STORESCU", "OXIDIP")
    assert path == default_path("STORESCU", _attributes(extracted))
