"""Storage layer: Parquet table schemas, image/label files, content ids and atomic writes."""

from nucleate.io.atomic import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_text
from nucleate.io.images import (
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    ImageError,
    content_id,
    find_labels,
    read_image,
    read_labels,
    write_image,
    write_labels,
)
from nucleate.io.layout import LAYOUT, Layout, MissingInput
from nucleate.io.tables import (
    ORIGINS,
    SCHEMAS,
    SPLITS,
    TableError,
    empty_table,
    probs_array,
    probs_table,
    read_table,
    table_metadata,
    validate_table,
    write_table,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "ORIGINS",
    "SCHEMAS",
    "SPLITS",
    "ImageError",
    "LAYOUT",
    "Layout",
    "MissingInput",
    "TableError",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "content_id",
    "empty_table",
    "find_labels",
    "probs_array",
    "probs_table",
    "read_image",
    "read_labels",
    "read_table",
    "table_metadata",
    "validate_table",
    "write_image",
    "write_labels",
    "write_table",
]
