from django.urls import path

from runs import views

app_name = "runs"

urlpatterns = [
    path("", views.threads, name="threads"),
    path("<str:thread_id>/", views.thread, name="thread"),
    path("<str:thread_id>/page/", views.thread_page, name="thread_page"),
    path("<str:thread_id>/status/", views.thread_status, name="thread_status"),
    path(
        "<str:thread_id>/checkpoints/<str:checkpoint_id>/",
        views.checkpoint,
        name="checkpoint",
    ),
    path(
        "<str:thread_id>/checkpoints/<str:checkpoint_id>/diff/",
        views.diff,
        name="diff",
    ),
    path(
        "<str:thread_id>/checkpoints/<str:checkpoint_id>/fork/",
        views.fork,
        name="fork",
    ),
]
