"""Test utilities: a raw PS3.8 PDU client, DICOM generation and checks, the pydicom corpus
selection, external tool discovery, and a harness that drains a running receiver's events."""
