"""The image pipeline: AWS clients, S3 event consumer, imaging, DLQ tools and CLI."""
