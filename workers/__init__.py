"""The engine that carries migrations out, in layers (each imports only those below it;
`bash dev.sh lint` checks it):

    steps     one module per step of a migration (snapshot, copy, prepare, cutover, ...)
    engine    the Celery app and its signals, per-process context, the step framework,
              the reconciler
    coord | hyperv | smb | obs
              Redis coordination (leases, admission, slots, throttle, ...); the Hyper-V
              driver over WinRM; the SMB copy engine; metrics and logs; none imports another
    model     states, the record, Redis keys, options, config, routing names, errors

Workers run as `celery -A workers.engine.app:app worker -Q snapshot|copy|cutover`.
"""
