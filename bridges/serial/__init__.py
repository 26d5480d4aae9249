"""The serial bridge: frames from serial ports published into the subject space,
downlink messages written back (``bridges/serial/README.md``)."""
