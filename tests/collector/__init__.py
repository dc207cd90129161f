"""Tests of collector/: configurations, manifests, dashboards and alert rules, validated with real tools."""
