"""A local server speaking the CDS XMatch sync protocol over local catalog indexes."""

from xmatch_pipeline.devtools.cds_server.catalogs import ServedCatalogs, parse_catalog_argument
from xmatch_pipeline.devtools.cds_server.faults import FAULT_KINDS, Fault
from xmatch_pipeline.devtools.cds_server.server import SYNC_PATH, CdsXmatchServer, RecordedRequest

__all__ = [
    "FAULT_KINDS",
    "SYNC_PATH",
    "CdsXmatchServer",
    "Fault",
    "RecordedRequest",
    "ServedCatalogs",
    "parse_catalog_argument",
]
