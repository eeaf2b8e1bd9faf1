"""Where artefact content lives, behind the domain's ``BlobStore`` port: a folder on this
machine (``filesystem``, the default) or an S3-compatible bucket (``s3``, over a small signed
client of its own); and ``sources``, the files CreateSession may read by URI.
"""
