"""The one compiled module (Kafka's murmur2); everything else is in pyproject.toml.

Optional: where no C compiler is found the install goes on and the partitioner uses the
pure Python reference (service.replication.codec says which one it runs)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "service.replication._murmur2",
            ["service/replication/_murmur2.c"],
            optional=True,
        )
    ]
)
