# Tend on the official Airflow image: the pinned requirements plus the tend package.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt pyproject.toml README.md /opt/tend/
COPY --chown=airflow:root include /opt/tend/include
RUN pip install --no-cache-dir -r /opt/tend/requirements.txt \
 && pip install --no-cache-dir --no-deps -e /opt/tend
COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
COPY --chown=airflow:root templates /opt/tend/templates
ENV TEND_TEMPLATES_DIR=/opt/tend/templates/email
