"""Is a service up? Cheap questions asked over the network, never trusting pid files alone."""

from __future__ import annotations

import uuid

READINESS_TOPIC = "devstack-readiness"
#: Connection errors while waiting for a starting broker are expected, not news: keep quiet.
_QUIET_CLIENT: dict[str, str | int | float] = {
    "log_level": 0,
    "socket.connection.setup.timeout.ms": 2000,
}


def kafka_answers(bootstrap_servers: str, timeout_seconds: float = 3.0) -> bool:
    """Whether a broker answers a metadata request."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **_QUIET_CLIENT})
    try:
        metadata = admin.list_topics(timeout=timeout_seconds)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def kafka_transactions_work(bootstrap_servers: str, timeout_seconds: float) -> str | None:
    """Commit one transactional message; None when it worked, else what went wrong.

    A broker can answer metadata before its transaction coordinator is ready; exactly-once
    needs the coordinator, so readiness includes it.
    """
    from confluent_kafka import KafkaException, Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "transactional.id": f"xmatch-devstack-readiness-{uuid.uuid4().hex[:8]}",
            "transaction.timeout.ms": 60000,
            **_QUIET_CLIENT,
        }
    )
    try:
        producer.init_transactions(timeout_seconds)
        producer.begin_transaction()
        producer.produce(READINESS_TOPIC, key=b"devstack", value=b"ready")
        producer.commit_transaction(timeout_seconds)
    except KafkaException as error:
        return str(error.args[0] if error.args else error)
    return None


def postgres_answers(database_url: str, timeout_seconds: int = 3) -> bool:
    """Whether PostgreSQL accepts the URL's credentials and runs ``SELECT 1``."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    database = create_engine(
        database_url, poolclass=NullPool, connect_args={"connect_timeout": timeout_seconds}
    )
    try:
        with database.connect() as connection:
            return connection.execute(text("SELECT 1")).scalar() == 1
    except SQLAlchemyError:
        return False
    finally:
        database.dispose()
