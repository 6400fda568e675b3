"""Create the operators, developers and admins groups with their permissions.

Permissions are normally created after all migrations have run, so this
migration creates them first for every app it refers to. Permissions added
by later models need a later migration to reach these groups.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

OPERATORS = [
    "runs.view_run",
    "runs.view_threadrecord",
    "approvals.view_decision",
    "approvals.add_decision",
    "approvals.change_decision",
    "approvals.decide",
    "approvals.view_approvalpolicy",
    "approvals.view_approverlimit",
]
DEVELOPERS_EXTRA = ["runs.fork_thread"]
# Developers view everything in these apps; admins may do everything in them.
CONSOLE_APPS = ["runs", "approvals", "checkpoints"]
ADMIN_APPS = [*CONSOLE_APPS, "auth", "authtoken"]
ADMIN_EXTRA = ["admin.view_logentry"]
# Decisions are the audit trail, and permissions come from code.
ADMIN_NEVER = [
    "delete_decision",
    "add_permission",
    "change_permission",
    "delete_permission",
]


def _permissions(Permission, db, names):
    found = []
    for name in names:
        app_label, codename = name.split(".")
        found.append(
            Permission.objects.using(db).get(
                content_type__app_label=app_label, codename=codename
            )
        )
    return found


def create_groups(apps, schema_editor):
    db = schema_editor.connection.alias
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, apps=apps, using=db)
        app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")

    operators, _ = Group.objects.using(db).get_or_create(name="operators")
    operators.permissions.add(*_permissions(Permission, db, OPERATORS))

    developers, _ = Group.objects.using(db).get_or_create(name="developers")
    developers.permissions.add(
        *Permission.objects.using(db).filter(
            content_type__app_label__in=CONSOLE_APPS, codename__startswith="view_"
        ),
        *_permissions(Permission, db, DEVELOPERS_EXTRA),
    )

    admins, _ = Group.objects.using(db).get_or_create(name="admins")
    admins.permissions.add(
        *Permission.objects.using(db)
        .filter(content_type__app_label__in=ADMIN_APPS)
        .exclude(codename__in=ADMIN_NEVER),
        *_permissions(Permission, db, ADMIN_EXTRA),
    )


def delete_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(
        name__in=["operators", "developers", "admins"]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0001_runs_and_thread_index"),
        ("approvals", "0001_policies_limits_and_decisions"),
        ("checkpoints", "0001_retention_policies_and_legal_holds"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("authtoken", "0004_alter_tokenproxy_options"),
        ("admin", "0003_logentry_add_action_flag_choices"),
    ]

    operations = [migrations.RunPython(create_groups, delete_groups)]
