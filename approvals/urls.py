from django.urls import path

from approvals import views

app_name = "approvals"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("calls/<int:pk>/", views.call_detail, name="call"),
    path("calls/<int:pk>/decide/", views.decide, name="decide"),
    path("calls/<int:pk>/presence/", views.presence, name="presence"),
    path("decisions/<int:pk>/receipt/", views.receipt, name="receipt"),
    path("threads/<path:thread_id>/", views.thread_call, name="thread_call"),
    path("audit/", views.audit, name="audit"),
    path("audit/decisions.csv", views.audit_csv, name="audit_csv"),
]
