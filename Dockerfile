# Tend on the official Airflow 3.3.2 image (its Python 3.11 build: Tend requires 3.11), with
# Tend's pinned requirements (the Celery provider included) and the tend package. The DAGs,
# plugins and templates are baked in, so every worker runs the same code.
FROM apache/airflow:3.3.2-python3.11

# The pinned requirements first, in a layer of their own: a change to Tend's code rebuilds
# only the layers after it, not the ~200 packages.
COPY --chown=airflow:root requirements.txt /opt/tend/
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/tend/requirements.txt

COPY --chown=airflow:root pyproject.toml README.md /opt/tend/
COPY --chown=airflow:root include /opt/tend/include
RUN pip install --no-cache-dir --no-deps -e /opt/tend

COPY --chown=airflow:root dags /opt/airflow/dags
COPY --chown=airflow:root plugins /opt/airflow/plugins
COPY --chown=airflow:root templates /opt/tend/templates
# Owned by airflow and writable by group root: the containers run as AIRFLOW_UID, always in
# group 0, so another uid than the image's airflow (50000) can write there too (the named
# volumes mounted on these folders start as copies of them; TEND_VAR_DIR also holds the SMTP
# backend's journal, which belongs to each container). No Chromium: campaign samples get no
# PNG (docs/deploy.md#campaign-samples).
RUN mkdir -p /opt/tend/outbox /opt/tend/spool /opt/tend/var/campaigns \
 && chmod -R g+rwX /opt/tend/outbox /opt/tend/spool /opt/tend/var
ENV TEND_TEMPLATES_DIR=/opt/tend/templates/email
ENV TEND_VAR_DIR=/opt/tend/var
