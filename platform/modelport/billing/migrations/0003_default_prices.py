from django.db import migrations

MICRO = 1_000_000


def add_prices(apps, schema_editor):
    Price = apps.get_model("billing", "Price")
    Price.objects.get_or_create(hardware="cpu", defaults={"base_per_call": MICRO // 10, "per_second": MICRO})
    Price.objects.get_or_create(hardware="gpu", defaults={"base_per_call": MICRO // 10, "per_second": 5 * MICRO})


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_initial")]
    operations = [migrations.RunPython(add_prices, migrations.RunPython.noop)]
