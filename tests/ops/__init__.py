"""Tests of the operations kit: alert rules, Prometheus/Alertmanager configs, Grafana dashboard, runbook."""
