"""Each quota hold of a reservation names its quota's metric: [counter id, held, metric].

Closing a reservation counts its use against each quota by that metric
(`billing.quotas.measure`) without reading the quotas again. Reservations
still open when this runs get the metric of their counter's quota.
"""

from django.db import migrations


def name_metrics(apps, schema_editor):  # type: ignore[no-untyped-def]
    Reservation = apps.get_model("billing", "Reservation")
    QuotaCounter = apps.get_model("billing", "QuotaCounter")
    metric_of = dict(QuotaCounter.objects.values_list("pk", "quota__metric"))
    for reservation in Reservation.objects.filter(status="open").exclude(quota_holds=[]):
        reservation.quota_holds = [
            [counter_id, held, metric_of.get(counter_id, "chat_tokens")]
            for counter_id, held, *_ in reservation.quota_holds
        ]
        reservation.save(update_fields=["quota_holds"])


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_reservation_prompt_and_details")]

    operations = [migrations.RunPython(name_metrics, migrations.RunPython.noop)]
