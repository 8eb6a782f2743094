import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "modelport.config.settings")
django_application = get_asgi_application()

from modelport.gateway.fastlane import FastLane  # noqa: E402 - needs Django set up

# Inference calls with an API key bypass Django's middleware (see gateway/fastlane.py).
application = FastLane(django_application)
