"""Connection health checks, run by the ``check_connections`` DAG."""

from __future__ import annotations


class ConnectionCheckFailed(RuntimeError):
    """A connection's ``test_connection`` reported a failure."""


def check_connection(conn_id: str) -> str:
    """Run the hook's ``test_connection`` for ``conn_id`` and return its message.

    The hook class is found from the connection type through Airflow's provider registry, so
    the ``marketo`` and ``dynamics`` types resolve to this project's hooks.

    Raises:
        ConnectionCheckFailed: The check failed; the message is the hook's reason.
    """
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    ok, message = conn.get_hook().test_connection()
    if not ok:
        raise ConnectionCheckFailed(f"{conn_id}: {message}")
    return f"{conn_id}: {message}"
