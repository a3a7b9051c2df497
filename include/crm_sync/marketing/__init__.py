"""What marketing knows, in front of sales (issue 20): Marketo program membership ⇄ Dynamics
campaigns, and Marketo activities on the Dynamics timeline.

This package sits on the floor of ``reconcile`` and ``setup`` (see ``pyproject.toml``): it uses the
engine's public functions (staging, run context, hooks built by the task session) and the
guards, state and transforms below it; the ``sync_activities`` and ``sync_program_membership``
DAGs reach it through :mod:`crm_sync.tasks`.
"""
