from nestlearn.cli import main

raise SystemExit(main())
