"""The console's URL map.

Every page requires a login (see ``agentmatic_web.middleware``); the API
under ``/api/`` authenticates by session or token instead.
"""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from agentmatic_web import views

admin.site.site_header = "Agentmatic administration"
admin.site.site_title = "Agentmatic admin"
admin.site.index_title = "Policies, retention and users"

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("approvals/", include("approvals.urls")),
    path("threads/", include("runs.urls")),
    path("retention/", include("checkpoints.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/", include("runs.api")),
    path("admin/", admin.site.urls),
]
