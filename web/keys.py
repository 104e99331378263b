"""Every object the app shares, under a typed key; handlers read state only through these."""

from __future__ import annotations

from aiohttp import web

from config.settings import Settings
from pipeline.aws import AwsClients
from pipeline.consumer import Consumer
from pipeline.status import StatusStore
from pipeline.storage import Storage

SETTINGS = web.AppKey("settings", Settings)
CLIENTS = web.AppKey("clients", AwsClients)
STORAGE = web.AppKey("storage", Storage)
STATUS = web.AppKey("status", StatusStore)
CONSUMER = web.AppKey("consumer", Consumer)
