from streamscore.cli import main

raise SystemExit(main())
