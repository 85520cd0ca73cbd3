"""The ``blkdebug-io`` tool: qemu-io's command language (``commands``) run
against a disk (``cli``)."""
