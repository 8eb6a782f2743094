import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "modelport.config.settings")
django_application = get_asgi_application()

from modelport.common.bodyguard import BodyGuard  # noqa: E402 - needs Django set up
from modelport.gateway.fastlane import FastLane  # noqa: E402

# Inference calls with an API key bypass Django's middleware (see gateway/fastlane.py); every
# other request's body is capped, and refused unread from anonymous callers (common/bodyguard.py).
application = FastLane(BodyGuard(django_application))

# What startup created lives as long as the process: out of the collector's full passes with it
# (measured here: a full collection over the ~110k startup objects took 20-70 ms, on a ~2 ms call,
# and full collections were the c=1 tail).
gc.freeze()
