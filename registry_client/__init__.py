"""registry-client: SIF images in S3 and Swift buckets, pulled into a verified node cache.

The public API is small: `pull`, `push` (in registry_client.service), the reference
parser (registry_client.names.parse_reference) and the exception tree
(registry_client.errors). Everything else is private and may change.
"""

__version__ = "0.1.0"
