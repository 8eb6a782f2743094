from django.contrib import admin

from modelport.billing.models import CreditAccount, LedgerEntry, Price

admin.site.register(CreditAccount)
admin.site.register(LedgerEntry)
admin.site.register(Price)
