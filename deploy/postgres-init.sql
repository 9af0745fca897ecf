-- Tend's contact store lives beside Airflow's metadata database, in its own database and role.
CREATE ROLE tend LOGIN PASSWORD 'tend';
CREATE DATABASE tend OWNER tend;
