"""The embedded endpoint's WSGI application: moto's, for a keep-alive server to serve
(`pipeline.aws.embedded`); `granian ... pipeline.aws.embedded_app:app` imports it in its worker."""

from __future__ import annotations

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from pipeline.aws import embedded_dynamodb

embedded_dynamodb.install()
app = DomainDispatcherApplication(create_backend_app)
