# Tend on the official Airflow 3.3.2 image (its Python 3.11 build: Tend requires 3.11), with
# Tend's pinned requirements (the Celery provider included) and the tend package. The DAGs,
# plugins and templates are baked in, so every worker runs the same code.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root requirements.txt pyproject.toml README.md /opt/tend/
COPY --chown=airflow:root include /opt/tend/include
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/tend/requirements.txt \
 && pip install --no-cache-dir --no-deps -e /opt/tend

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
COPY --chown=airflow:root templates /opt/tend/templates
# Owned by airflow in the image, so the named volumes mounted here start writable.
RUN mkdir -p /opt/tend/outbox /opt/tend/spool
ENV TEND_TEMPLATES_DIR=/opt/tend/templates/email
