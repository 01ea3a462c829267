"""Shared infrastructure, the bottom layer above ``schemas``: settings, the object store,
image encoding and decoding, the audit-store tables and their Alembic migrations, Kafka
admin helpers, statistics and the progress bar. Imports nothing of linecheck's but
``schemas``; importing it loads neither cv2, torch nor openvino."""
