"""The emulated Hyper-V host: WS-Management server, Hyper-V model, guest writer, faults.

Start one per host with `python -m lab.emulator --lab-dir DIR --host hv1`; drive its lab
control API with `lab.emulator.client.EmulatorClient`; check a VM afterwards with
`lab.verify.verify_vm`.
"""
