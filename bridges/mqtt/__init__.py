"""The MQTT bridge: MQTT topics <-> NATS subjects through a paho-mqtt client driven by Trio."""
