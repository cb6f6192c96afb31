from unet_resnet.cli import main

raise SystemExit(main())
