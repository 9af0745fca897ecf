"""The thin layer between Airflow and Tend's domain core.

It takes Airflow's world (connections, Variables, a run's params and conf, the task context) and
gives the plain values ``tend`` takes: ``connections`` turns ``tend_shop``/``tend_store`` into
database URLs, ``runs`` tells which night a run is and what it switched on, ``delivery`` builds
the backend from its Variable and connections, ``params`` and ``assets`` declare what the DAGs
show and hand each other, and ``tasks`` holds the task bodies the DAG files wire together. Only
this package and ``dags/`` import airflow; nothing here touches a database or a connection at
DAG parse time.
"""
