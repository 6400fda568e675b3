"""Give the role groups the permissions of the tables added in 0002.

The groups are created in runs.0002 with the permissions that existed then;
permissions of later models reach them only through a migration like this.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GRANTS = {
    "admins": ["view_pendingcall", "view_refund", "view_callviewer"],
    "operators": ["view_pendingcall", "view_refund"],
    "developers": ["view_pendingcall", "view_refund"],
}


def grant(apps, schema_editor):
    db = schema_editor.connection.alias
    app_config = apps.get_app_config("approvals")
    app_config.models_module = True
    create_permissions(app_config, verbosity=0, apps=apps, using=db)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GRANTS.items():
        group = Group.objects.using(db).filter(name=name).first()
        if group is None:
            continue
        group.permissions.add(
            *Permission.objects.using(db).filter(
                content_type__app_label="approvals", codename__in=codenames
            )
        )


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0002_pending_calls_viewers_refunds_and_final_decisions"),
        ("runs", "0002_create_role_groups"),
    ]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
